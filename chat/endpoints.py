"""Model endpoints: any OpenAI-compatible server, with presets for the common local ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_openai import ChatOpenAI


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    base_url: str
    needs_api_key: bool = False


PRESETS: tuple[Preset, ...] = (
    Preset("ollama", "Ollama", "http://localhost:11434/v1"),
    Preset("lmstudio", "LM Studio", "http://localhost:1234/v1"),
    Preset("llamacpp", "llama.cpp server", "http://localhost:8080/v1"),
    Preset("openai", "OpenAI", "https://api.openai.com/v1", needs_api_key=True),
    Preset("custom", "Custom", ""),
)
PRESETS_BY_KEY = {p.key: p for p in PRESETS}

API_KEY_SECRET_PREFIX = "model-api-key:"


def api_key_name(base_url: str) -> str:
    """The keyring entry of the API key for an endpoint."""
    return API_KEY_SECRET_PREFIX + base_url.rstrip("/")


FIRST_TOKEN_TIMEOUT = 300.0
"""Default seconds to wait for a reply's first word: a local server may load the model first (minutes, for a large
one on a slow disk). The setting MODEL_FIRST_TOKEN_TIMEOUT."""
TOKEN_TIMEOUT = 60.0
"""Default seconds of silence allowed between words once a reply flows. The setting MODEL_TOKEN_TIMEOUT."""
CONNECT_TIMEOUT = 15.0
"""Seconds to wait for the server to accept the connection: nothing is loaded before that, so it is short, and an
unreachable server is told as such rather than as a silent one."""


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str = ""
    api_key: str | None = None
    system_prompt: str = ""
    first_token_timeout: float = FIRST_TOKEN_TIMEOUT
    token_timeout: float = TOKEN_TIMEOUT

    def __repr__(self) -> str:  # never show the key
        return f"Endpoint(base_url={self.base_url!r}, model={self.model!r}, api_key={'***' if self.api_key else None})"


class ModelSilent(TimeoutError):
    """The model server sent no word within the limit: ``seconds``, the limit; ``flowing``, whether words had
    come before (the limit between words) or not (the limit for the first word)."""

    def __init__(self, seconds: float, *, flowing: bool) -> None:
        super().__init__(f"no token for {seconds:g} s")
        self.seconds = seconds
        self.flowing = flowing


class ModelListError(Exception):
    """The server did not list its models; the message says why in words."""


class ServerUnreachable(ModelListError):
    """No connection to the model server at all (nothing listening, no such host): most often it is not started."""


class NoAnswer(ModelListError):
    """The connection was made (or tried) but no HTTP answer came: a timeout or a broken exchange."""


class KeyRefused(ModelListError):
    """The server answered 401 or 403: it refused the API key (or the lack of one)."""


OLLAMA_PORT = 11434


def unreachable_words(base_url: str) -> str:
    """What to tell the user when nothing answers at ``base_url``: where we knocked, and what is likely not running
    (Ollama, by its port, which its preset and its documentation use; else any server)."""
    try:
        url = httpx.URL(base_url.strip())
        port = url.port or (443 if url.scheme == "https" else 80)
        where = f"{url.host}:{port}" if url.host else base_url
    except (httpx.InvalidURL, ValueError):
        return f"Cannot reach the model server at {base_url} — is the server running?"
    question = "is Ollama running?" if port == OLLAMA_PORT else "is the server running?"
    return f"Cannot reach the model server at {where} — {question}"


def check_base_url(base_url: str) -> str:
    """The URL if it can be asked at all (http or https, a host, a valid port); ModelListError saying why not."""
    example = "it should look like http://localhost:11434/v1"
    if not base_url.strip():
        raise ModelListError(f"No server URL is set: {example}")
    try:
        url = httpx.URL(base_url.strip())
        port = url.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise ModelListError(f"{base_url!r} is not a valid URL ({exc}): {example}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ModelListError(f"{base_url!r} is not an http:// or https:// URL: {example}")
    if port is not None and not 0 < port < 65536:
        raise ModelListError(f"{base_url!r} has an invalid port {port}: {example}")
    return base_url.strip()


async def list_models(
    base_url: str, api_key: str | None = None, *, timeout: float = 10.0, sort: bool = True
) -> list[str]:
    """The model ids the server offers (``GET /models``), sorted for showing; ``sort=False`` keeps the server's
    order, which says what it offers first (LiteLLM lists its configured models in order, so sorting could put a
    rate-limited test model before the main one)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = check_base_url(base_url).rstrip("/") + "/models"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url, headers=headers)
    except httpx.ConnectError as exc:
        raise ServerUnreachable(f"Cannot reach {base_url}: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise NoAnswer(f"No answer from {base_url} within {timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise NoAnswer(f"Request to {base_url} failed: {exc}") from exc
    if response.status_code in (401, 403):
        raise KeyRefused(f"The server refused the API key (HTTP {response.status_code})")
    if response.status_code >= 400:
        raise ModelListError(f"The server answered HTTP {response.status_code} to GET {url}")
    try:
        data: Any = response.json()
        models = [str(item["id"]) for item in data["data"]]
        return sorted(models) if sort else models
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelListError(f"{url} did not return an OpenAI-style model list") from exc


def chat_model(endpoint: Endpoint) -> BaseChatModel:
    """A streaming LangChain chat model for the endpoint (imported here: langchain-openai takes 2 s to import)."""
    from openai import Timeout  # the client's own httpx (a vendored copy): an httpx.Timeout is refused
    from pydantic import SecretStr

    return _reasoning_chat_openai()(
        base_url=endpoint.base_url,
        api_key=SecretStr(endpoint.api_key or "not-needed"),  # local servers ignore it; the client insists on one
        model=endpoint.model,
        streaming=True,
        # A failure is shown at once with a Retry (a 429 with when to try again): silent retries would look like a
        # hang, and the client's own retries of a 429 could wait out a Retry-After of minutes unseen.
        max_retries=0,
        # The limits on silence are kept by chat.deadlines, which tells a slow first word from a stalled reply; this
        # read timeout is only a backstop, longer than both.
        timeout=Timeout(
            max(endpoint.first_token_timeout, endpoint.token_timeout) * 1.25 + 1,
            connect=min(CONNECT_TIMEOUT, endpoint.first_token_timeout),
        ),
        # Off: it wraps each chunk read in asyncio.wait_for, which on Python 3.11 can swallow the cancellation of
        # Stop (CPython gh-86296), so the reply went on streaming. chat.deadlines bounds a silent server instead.
        stream_chunk_timeout=None,
        # Ask for the token counts (``stream_options.include_usage``): stored with each reply and shown under it.
        stream_usage=True,
    )


_REASONING_CLASS: type[ChatOpenAI] | None = None


def _reasoning_chat_openai() -> type[ChatOpenAI]:
    """ChatOpenAI that keeps ``delta.reasoning_content``, which it drops (it follows OpenAI's own API only): thinking
    models behind Ollama, vLLM, LM Studio and DeepSeek stream their reasoning there (see chat/thinking.py). The
    override is the one langchain-deepseek's ChatDeepSeek makes, for any OpenAI-compatible server."""
    global _REASONING_CLASS
    if _REASONING_CLASS is not None:
        return _REASONING_CLASS
    from langchain_core.outputs import ChatGenerationChunk
    from langchain_openai import ChatOpenAI as Base

    from chat.thinking import REASONING

    class ReasoningChatOpenAI(Base):
        def _convert_chunk_to_generation_chunk(
            self, chunk: dict[str, Any], default_chunk_class: type, base_generation_info: dict[str, Any] | None
        ) -> ChatGenerationChunk | None:
            generation = super()._convert_chunk_to_generation_chunk(chunk, default_chunk_class, base_generation_info)
            choices = chunk.get("choices") or []
            delta = (choices[0].get("delta") or {}) if choices else {}
            thought = delta.get(REASONING) or delta.get("reasoning")  # vLLM's newer name
            if generation is not None and isinstance(thought, str) and thought:
                generation.message.additional_kwargs[REASONING] = thought
            return generation

    _REASONING_CLASS = ReasoningChatOpenAI
    return ReasoningChatOpenAI
