"""``python main.py doctor``: the storage's report (``storage.doctor``) and the model server's section: reachable,
models listed, the chosen model there, the API key accepted.

Told in the words the window uses for the same cases (``chat.errors`` for a server nothing answers at, the
settings dialog's model list for the rest), so what ``doctor`` says can be looked up in what the window said.
Only ``GET /models`` is asked: a chat request could make a local server load the model, for minutes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from chat.endpoints import (
    KeyRefused,
    ModelListError,
    NoAnswer,
    ServerUnreachable,
    api_key_name,
    check_base_url,
    list_models,
)
from chat.errors import describe_model_error
from storage.doctor import MIN_ATTEMPT_SECONDS, diagnose, report_json, report_text
from storage.secrets import SecretStore, mask_secrets
from storage.settings import Settings
from storage.status import StorageStatus

SHOWN_MODELS = 8
"""Models named in the text report; the JSON lists them all."""


@dataclass(frozen=True)
class Check:
    ok: bool | None
    """None: not checked (an earlier check failed)."""
    words: str


NOT_CHECKED = Check(None, "not checked")


@dataclass(frozen=True)
class ServerCheck:
    base_url: str
    reachable: Check
    models: Check
    model: Check
    api_key: Check
    listed: list[str] = field(default_factory=list)
    first_token_timeout: float = 0.0
    token_timeout: float = 0.0

    @property
    def ok(self) -> bool:
        return all(check.ok for check in (self.reachable, self.models, self.model, self.api_key))

    def checks(self) -> dict[str, Check]:
        return {"reachable": self.reachable, "models": self.models, "model": self.model, "API key": self.api_key}

    def to_json(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "ok": self.ok,
            **{
                name.lower().replace(" ", "_"): {"ok": check.ok, "words": check.words}
                for name, check in self.checks().items()
            },
            "models_listed": self.listed,
            "first_token_timeout": self.first_token_timeout,
            "token_timeout": self.token_timeout,
        }

    def text(self) -> str:
        lines = [f"Model server:  {self.base_url}"]
        for name, check in self.checks().items():
            mark = {True: "ok", False: "FAILED", None: "-"}[check.ok]
            lines.append(f"  {name:<10} {mark:<7} {check.words}")
        lines.append(
            f"  {'waits':<10} {'':<7} {self.first_token_timeout:g} s for the first token, "
            f"{self.token_timeout:g} s between tokens"
        )
        return "\n".join(lines)


async def check_model_server(settings: Settings, secrets: SecretStore, *, timeout: float) -> ServerCheck:
    """Ask the configured server for its models (at most ``timeout`` seconds) and judge the answer."""
    base_url = settings.model_base_url
    api_key = secrets.get(api_key_name(base_url)) if base_url.strip() else None

    def result(
        reachable: Check, models: Check, model: Check, key: Check, listed: list[str] | None = None
    ) -> ServerCheck:
        return ServerCheck(
            base_url,
            reachable,
            models,
            model,
            key,
            listed or [],
            first_token_timeout=settings.model_first_token_timeout,
            token_timeout=settings.model_token_timeout,
        )

    try:
        check_base_url(base_url)
    except ModelListError as exc:
        unusable = Check(False, f"not asked: {mask_secrets(str(exc))}")
        return result(unusable, NOT_CHECKED, NOT_CHECKED, NOT_CHECKED)
    timeout = round(max(timeout, 0.1), 1)
    try:
        # The whole exchange within the time, not each of its steps: building the client alone (its SSL context)
        # takes a noticeable part of a second on a busy machine.
        async with asyncio.timeout(timeout):
            listed = await list_models(base_url, api_key, timeout=timeout, sort=False)
    except TimeoutError:
        no_answer = Check(False, f"No answer from {base_url} within {timeout:g} s")
        return result(no_answer, NOT_CHECKED, NOT_CHECKED, NOT_CHECKED)
    except (ServerUnreachable, NoAnswer) as exc:
        words = describe_model_error(exc, base_url)[0] if isinstance(exc, ServerUnreachable) else str(exc)
        return result(Check(False, mask_secrets(words)), NOT_CHECKED, NOT_CHECKED, NOT_CHECKED)
    except KeyRefused as exc:
        fix = "Check it in Settings → Model." if api_key else "No key is set: enter it in Settings → Model."
        refused = Check(False, f"{exc}. {fix}")
        return result(Check(True, "yes"), NOT_CHECKED, NOT_CHECKED, refused)
    except ModelListError as exc:  # the server answered, but not with a model list
        models = Check(False, mask_secrets(str(exc)))
        return result(Check(True, "yes"), models, NOT_CHECKED, NOT_CHECKED)
    more = len(listed) - SHOWN_MODELS
    shown = ", ".join(listed[:SHOWN_MODELS]) + (f", … ({more} more)" if more > 0 else "")
    models = Check(True, f"{len(listed)} listed: {shown}") if listed else Check(False, "The server lists no models")
    chosen = settings.model_name
    if chosen and chosen in listed:
        model = Check(True, f"{chosen}: on the server")
    elif chosen:
        model = Check(
            False,
            f"The model was not found on the server: {chosen} is not among the {len(listed)} it lists. "
            "Pick another in Settings → Model.",
        )
    elif listed:
        model = Check(True, f"none chosen: the server's first, {listed[0]}, is used")
    else:
        model = Check(False, "No model is chosen and the server offers none")
    key = Check(True, "accepted") if api_key else Check(True, "none set; the server asks for none")
    return result(Check(True, "yes"), models, model, key, listed)


async def diagnose_all(
    settings: Settings, secrets: SecretStore, *, started: float | None = None
) -> tuple[StorageStatus, ServerCheck]:
    """The storage (``storage.doctor.diagnose``) and the model server, asked at the same time: the answer comes
    within the connect timeout plus a second, whichever of them does not answer (``started``: as for ``diagnose``)."""
    elapsed = time.monotonic() - started if started is not None else 0.0
    timeout = max(MIN_ATTEMPT_SECONDS, settings.connect_timeout - elapsed)
    status, server = await asyncio.gather(
        diagnose(settings, secrets, started=started), check_model_server(settings, secrets, timeout=timeout)
    )
    return status, server


def report(
    settings: Settings, secrets: SecretStore, status: StorageStatus, server: ServerCheck, *, as_json: bool
) -> str:
    if as_json:
        return report_json(settings, secrets, status, {"model_server": server.to_json()})
    return report_text(settings, secrets, status, [server.text()])
