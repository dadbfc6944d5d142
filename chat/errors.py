"""A failed model call in words the user can act on, and its kind (for the inline error and its Retry)."""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime
from typing import Any

from chat.endpoints import ModelListError, ModelSilent, ServerUnreachable, unreachable_words


def describe_model_error(exc: BaseException, base_url: str = "") -> tuple[str, str]:
    """(message, kind); kind is auth, model, server, rate_limit, network, timeout, bad_request, config or bug.
    ``base_url``: the server asked, named in the words when nothing answers there."""
    if isinstance(exc, ServerUnreachable):
        root = _root_cause(exc)
        words = unreachable_words(base_url) if base_url else "Cannot reach the model server. Is it running?"
        return f"{words} ({str(root) or type(root).__name__})", "network"
    if isinstance(exc, ModelListError):
        return f"No model is chosen and the server did not list its models: {exc}", "config"
    import openai  # here, not at the top: the OpenAI SDK takes 0.3 s to import, and the window is ready without it

    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return f"The model server refused the API key ({_detail(exc)}). Check it in Settings → Model.", "auth"
    if isinstance(exc, openai.NotFoundError):
        return f"The model was not found on the server ({_detail(exc)}). Pick another in Settings.", "model"
    if isinstance(exc, openai.RateLimitError):
        wait = retry_after_seconds(getattr(exc, "response", None))
        when = f"it asks to wait {wait_words(wait)}" if wait is not None else "try again shortly"
        return f"The model server is busy (rate limited): {when}. ({_detail(exc)})", "rate_limit"
    if isinstance(exc, openai.BadRequestError):
        return f"The model server rejected the request ({_detail(exc)}).", "bad_request"
    if isinstance(exc, openai.InternalServerError | openai.APIStatusError):
        return f"The model server failed ({_detail(exc)}). Try again.", "server"
    if isinstance(exc, ModelSilent):
        return silent_words(exc), "timeout"
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return "The model server did not answer in time. Try again.", "timeout"
    if isinstance(exc, openai.APIConnectionError | ConnectionError | OSError):
        root = _root_cause(exc)  # the client's own message is just "Connection error."
        cause = str(root) or type(root).__name__
        if type(root).__name__ in _CUT_OFF or isinstance(root, ConnectionResetError | BrokenPipeError):
            return (
                f"The model server closed the connection before the reply was complete ({cause}). Try again.",
                "network",
            )
        if base_url:
            return f"{unreachable_words(base_url)} ({cause})", "network"
        return f"Cannot reach the model server ({cause}). Is it running?", "network"
    if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIResponseValidationError):
        # What is left of APIError is the error event a server sends inside an HTTP 200 stream (LiteLLM, vLLM and
        # OpenAI report an upstream failure so once the stream has begun): the server's failure, told in its words.
        return f"The model server reported an error: {exc.message or 'no details'}", "server"
    if isinstance(exc, LookupError):
        return str(exc), "config"
    return f"The reply failed: {type(exc).__name__}: {exc}", "bug"


def silent_words(exc: ModelSilent) -> str:
    seconds = f"{exc.seconds:g} s"  # as the settings count it
    if exc.flowing:
        return (
            f"The model server stopped sending for {seconds} in the middle of the reply. Try again; the limit is "
            "MODEL_TOKEN_TIMEOUT (Settings → Model)."
        )
    return (
        f"The model server sent nothing for {seconds}. A local server may still be loading the model: try again, "
        "or allow it longer with MODEL_FIRST_TOKEN_TIMEOUT (Settings → Model)."
    )


def rate_limit_wait(exc: BaseException) -> float | None:
    """The seconds a rate-limited server asked to wait before the next try (None for another error, or when it did
    not say): the window counts them down on its Retry button."""
    import openai

    if not isinstance(exc, openai.RateLimitError):
        return None
    return retry_after_seconds(getattr(exc, "response", None))


def retry_after_seconds(response: Any, now: float | None = None) -> float | None:
    """How long a rate-limited server asks to wait: ``retry-after-ms`` (OpenAI's), else ``Retry-After`` in seconds
    or as an HTTP date; None when it does not say (or says something unreadable)."""
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    text = (headers.get("retry-after") or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if math.isfinite(value) and value >= 0 else None


def wait_words(seconds: float) -> str:
    """A wait in words: ``20 s``, ``3 min``, ``2 min 5 s``; rounded up (sooner would only be refused again)."""
    whole = math.ceil(seconds - 1e-9)
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    if minutes >= 60:
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


_CUT_OFF = frozenset({"RemoteProtocolError", "ReadError", "IncompleteRead"})
"""Exception class names (httpx, httpcore, h11, http.client) for a connection dropped in the middle of an answer."""


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    return exc


def _detail(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message", message)
    text = message or str(exc)
    return f"HTTP {status}: {text}" if status else text
