"""A failed model call in words the user can act on, and its kind (for the inline error and its Retry)."""

from __future__ import annotations

import openai

from chat.endpoints import ModelListError, ServerUnreachable, unreachable_words


def describe_model_error(exc: BaseException, base_url: str = "") -> tuple[str, str]:
    """(message, kind); kind is auth, model, server, rate_limit, network, timeout, bad_request, config or bug.
    ``base_url``: the server asked, named in the words when nothing answers there."""
    if isinstance(exc, ServerUnreachable):
        cause = _root_cause(exc)
        words = unreachable_words(base_url) if base_url else "Cannot reach the model server. Is it running?"
        return f"{words} ({str(cause) or type(cause).__name__})", "network"
    if isinstance(exc, ModelListError):
        return f"No model is chosen and the server did not list its models: {exc}", "config"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return f"The model server refused the API key ({_detail(exc)}). Check it in Settings → Model.", "auth"
    if isinstance(exc, openai.NotFoundError):
        return f"The model was not found on the server ({_detail(exc)}). Pick another in Settings.", "model"
    if isinstance(exc, openai.RateLimitError):
        return f"The model server is rate-limiting requests ({_detail(exc)}). Try again shortly.", "rate_limit"
    if isinstance(exc, openai.BadRequestError):
        return f"The model server rejected the request ({_detail(exc)}).", "bad_request"
    if isinstance(exc, openai.InternalServerError | openai.APIStatusError):
        return f"The model server failed ({_detail(exc)}). Try again.", "server"
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
