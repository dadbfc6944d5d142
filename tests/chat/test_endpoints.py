"""Model endpoints: model discovery, the chat model against a real server, and failures in words."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage

from chat.endpoints import (
    PRESETS,
    PRESETS_BY_KEY,
    Endpoint,
    ModelListError,
    ServerUnreachable,
    api_key_name,
    chat_model,
    list_models,
    unreachable_words,
)
from chat.errors import describe_model_error
from tests.support.model_server import ModelServer

LIMITS = {"first_token_timeout": 10.0, "token_timeout": 10.0}


@pytest.fixture
async def server() -> AsyncIterator[ModelServer]:
    async with ModelServer() as model_server:
        yield model_server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def canned(server: ModelServer) -> Callable[[int, str, bytes], str]:
    """The test model server answering ``GET /models`` with one fixed response; gives its base URL."""

    def answer(status: int, content_type: str, body: bytes) -> str:
        server.models_answer = (status, content_type, body)
        return server.base_url

    return answer


# --- list_models ------------------------------------------------------------------------------------------------


async def test_list_models_gives_the_server_models_sorted(server: ModelServer) -> None:
    server.models = ["zeta-7b", "alpha-1b", "mistral:latest"]
    assert await list_models(server.base_url) == ["alpha-1b", "mistral:latest", "zeta-7b"]
    assert await list_models(server.base_url + "/") == ["alpha-1b", "mistral:latest", "zeta-7b"]
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/v1/models"), ("GET", "/v1/models")]


async def test_list_models_can_keep_the_server_order(server: ModelServer) -> None:
    server.models = ["zeta-7b", "alpha-1b", "mistral:latest"]
    assert await list_models(server.base_url, sort=False) == ["zeta-7b", "alpha-1b", "mistral:latest"]


async def test_list_models_sends_the_api_key(server: ModelServer) -> None:
    server.api_key = "sk-test-123456"
    assert await list_models(server.base_url, "sk-test-123456") == ["other-model", "test-model"]
    assert server.requests[-1].headers["authorization"] == "Bearer sk-test-123456"


@pytest.mark.parametrize("api_key", [None, "sk-wrong-key"], ids=["no_key", "wrong_key"])
async def test_list_models_refused_key(server: ModelServer, api_key: str | None) -> None:
    server.api_key = "sk-right-key"
    with pytest.raises(ModelListError) as caught:
        await list_models(server.base_url, api_key)
    message = str(caught.value)
    assert "refused the API key" in message
    assert "HTTP 401" in message
    assert "sk-right-key" not in message and "sk-wrong-key" not in message


async def test_list_models_refused_port() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(ModelListError, match="Cannot reach") as caught:
        await list_models(url)
    assert url in str(caught.value)


async def test_list_models_no_answer_in_time() -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        with pytest.raises(ModelListError, match=r"No answer from .* within 0\.3 s"):
            await list_models(url, timeout=0.3)


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (200, "text/html", b"<html><body>Welcome to nginx!</body></html>"),
        (200, "application/json", b'{"models": ["not", "openai", "style"]}'),
        (200, "application/json", b'{"data": [{"name": "no id"}]}'),
        (200, "application/json", b'{"data": "nope"}'),
        (200, "application/json", b"[1, 2, 3]"),
        (200, "application/json", b""),
    ],
    ids=["html", "other_shape", "no_id", "data_not_list", "array", "empty"],
)
async def test_list_models_not_a_model_list(
    canned: Callable[[int, str, bytes], str], status: int, content_type: str, body: bytes
) -> None:
    url = canned(status, content_type, body)
    with pytest.raises(ModelListError, match="did not return an OpenAI-style model list") as caught:
        await list_models(url)
    assert url + "/models" in str(caught.value)


@pytest.mark.parametrize("status", [404, 500, 502])
async def test_list_models_http_error(canned: Callable[[int, str, bytes], str], status: int) -> None:
    url = canned(status, "text/html", b"<h1>nope</h1>")
    with pytest.raises(ModelListError, match=f"answered HTTP {status} to GET {url}/models"):
        await list_models(url)


async def test_list_models_wrong_path_on_a_real_server(server: ModelServer) -> None:
    with pytest.raises(ModelListError, match="HTTP 404"):
        await list_models(server.base_url.replace("/v1", "/v2"))


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "No server URL is set"),
        ("   ", "No server URL is set"),
        ("localhost:11434/v1", "not an http:// or https:// URL"),
        ("ftp://127.0.0.1/v1", "not an http:// or https:// URL"),
        ("http:///v1", "not an http:// or https:// URL"),
        ("http://127.0.0.1:99999/v1", "invalid port 99999"),
    ],
)
async def test_list_models_unusable_url(url: str, words: str) -> None:
    with pytest.raises(ModelListError, match=words) as caught:
        await list_models(url)
    assert "http://localhost:11434/v1" in str(caught.value)  # says what a URL should look like


# --- the chat model ---------------------------------------------------------------------------------------------


async def test_chat_model_streams_from_the_server_with_the_key(server: ModelServer) -> None:
    server.api_key = "sk-chat-key"
    llm = chat_model(Endpoint(server.base_url, "other-model", api_key="sk-chat-key", **LIMITS))

    chunks = [chunk async for chunk in llm.astream([HumanMessage("stream this please")])]

    assert "".join(str(c.content) for c in chunks) == "Echo: stream this please"
    assert sum(1 for c in chunks if c.content) == 4  # token by token, not one block
    request = server.chat_requests[-1]
    assert request.headers["authorization"] == "Bearer sk-chat-key"
    assert request.model == "other-model"
    assert request.stream


async def test_chat_model_without_key_works_with_a_local_server(server: ModelServer) -> None:
    llm = chat_model(Endpoint(server.base_url, "test-model"))
    reply = await llm.ainvoke([HumanMessage("hi")])
    assert reply.content == "Echo: hi"


async def test_chat_model_does_not_retry_silently(server: ModelServer) -> None:
    llm = chat_model(Endpoint(server.base_url, "test-model", **LIMITS))
    server.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        await llm.ainvoke([HumanMessage("once")])
    assert len(server.chat_requests) == 1  # shown at once, so the user can Retry
    assert (await llm.ainvoke([HumanMessage("twice")])).content == "Echo: twice"


@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [
        (400, "bad_request", "rejected the request"),
        (401, "auth", "refused the API key"),
        (403, "auth", "refused the API key"),
        (404, "model", "model was not found"),
        (429, "rate_limit", "busy (rate limited)"),
        (500, "server", "model server failed"),
        (503, "server", "model server failed"),
    ],
)
async def test_http_failures_in_words(server: ModelServer, status: int, kind: str, words: str) -> None:
    llm = chat_model(Endpoint(server.base_url, "test-model", **LIMITS))
    server.fail_next(status, f"the server says {status}")
    with pytest.raises(openai.APIStatusError) as caught:
        await llm.ainvoke([HumanMessage("hello")])

    message, got_kind = describe_model_error(caught.value)

    assert got_kind == kind
    assert words in message
    assert f"HTTP {status}: the server says {status}" in message


async def test_connection_failures_in_words(server: ModelServer) -> None:
    refused = chat_model(Endpoint(f"http://127.0.0.1:{closed_port()}/v1", "test-model"))
    with pytest.raises(openai.APIConnectionError) as caught:
        await refused.ainvoke([HumanMessage("anyone?")])
    message, kind = describe_model_error(caught.value)
    assert kind == "network"
    assert message.startswith("Cannot reach the model server (")
    assert "Connection error.)" not in message  # the cause, not the client's generic words

    server.disconnect_next(after_tokens=1)
    cut = chat_model(Endpoint(server.base_url, "test-model", **LIMITS))
    with pytest.raises(openai.APIConnectionError) as caught:
        await cut.ainvoke([HumanMessage("cut me off")])
    message, kind = describe_model_error(caught.value)
    assert kind == "network"
    assert "closed the connection before the reply was complete" in message

    server.hang_next()
    slow = chat_model(Endpoint(server.base_url, "test-model", first_token_timeout=0.5, token_timeout=0.5))
    with pytest.raises(openai.APITimeoutError) as caught:
        await slow.ainvoke([HumanMessage("too slow")])
    assert describe_model_error(caught.value) == ("The model server did not answer in time. Try again.", "timeout")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (LookupError("No model is chosen: pick one in Settings → Model"), "config"),
        (TimeoutError(), "timeout"),
        (ConnectionResetError(104, "Connection reset by peer"), "network"),
        (ConnectionRefusedError(111, "Connection refused"), "network"),
        (ValueError("surprise"), "bug"),
    ],
)
def test_other_failures_in_words(exc: BaseException, kind: str) -> None:
    message, got_kind = describe_model_error(exc)
    assert got_kind == kind
    assert message
    if kind == "config":
        assert message == str(exc)
    if kind == "bug":
        assert "ValueError: surprise" in message


# --- settings helpers -------------------------------------------------------------------------------------------


def test_endpoint_repr_never_shows_the_key() -> None:
    endpoint = Endpoint("http://localhost:11434/v1", "llama3", api_key="sk-very-secret", system_prompt="hi")
    assert "sk-very-secret" not in repr(endpoint)
    assert "***" in repr(endpoint)
    assert "api_key=None" in repr(Endpoint("http://localhost:11434/v1"))


def test_api_key_name_ignores_a_trailing_slash() -> None:
    assert api_key_name("https://api.openai.com/v1/") == api_key_name("https://api.openai.com/v1")
    assert api_key_name("https://api.openai.com/v1") != api_key_name("http://localhost:11434/v1")


def test_presets() -> None:
    assert [p.key for p in PRESETS] == ["ollama", "lmstudio", "llamacpp", "openai", "custom"]
    assert PRESETS_BY_KEY["openai"].needs_api_key
    assert not PRESETS_BY_KEY["ollama"].needs_api_key
    assert all(p.base_url.startswith("http") for p in PRESETS if p.key != "custom")


def test_an_unreachable_server_is_named_and_ollama_only_at_its_address() -> None:
    ollama = PRESETS_BY_KEY["ollama"].base_url
    assert unreachable_words(ollama) == "Cannot reach the model server at localhost:11434 — is Ollama running?"
    assert unreachable_words(PRESETS_BY_KEY["lmstudio"].base_url) == (
        "Cannot reach the model server at localhost:1234 — is the server running?"
    )
    assert unreachable_words("https://models.example/v1").endswith("at models.example:443 — is the server running?")


async def test_listing_a_closed_port_says_the_server_is_not_reachable_in_words() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(ServerUnreachable) as caught:
        await list_models(base_url, sort=False)
    message, kind = describe_model_error(caught.value, base_url)
    assert kind == "network"
    assert message.startswith(f"{unreachable_words(base_url)} (")

    refused = chat_model(Endpoint(base_url, "test-model"))
    with pytest.raises(openai.APIConnectionError) as reply_caught:
        await refused.ainvoke([HumanMessage("anyone?")])
    assert describe_model_error(reply_caught.value, base_url)[0].startswith(unreachable_words(base_url))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "20"}, 20.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "2500", "retry-after": "9"}, 2.5),  # OpenAI's finer header wins
        ({"retry-after": "Wed, 21 Oct 2026 07:28:30 GMT"}, 30.0),  # an HTTP date, 30 s after "now" below
        ({"retry-after": "Wed, 21 Oct 2026 07:27:00 GMT"}, 0.0),  # already past
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-5"}, None),
        ({}, None),
    ],
)
def test_retry_after_in_seconds_or_as_a_date(headers: dict[str, str], expected: float | None) -> None:
    from email.utils import parsedate_to_datetime

    from chat.errors import retry_after_seconds

    now = parsedate_to_datetime("Wed, 21 Oct 2026 07:28:00 GMT").timestamp()
    assert retry_after_seconds(httpx.Response(429, headers=headers), now=now) == expected


def test_silence_is_told_with_its_limit_and_the_setting_to_change() -> None:
    from chat.endpoints import ModelSilent

    first, kind = describe_model_error(ModelSilent(300, flowing=False))
    assert kind == "timeout"
    assert first.startswith("The model server sent nothing for 300 s.") and "MODEL_FIRST_TOKEN_TIMEOUT" in first
    between, _ = describe_model_error(ModelSilent(60, flowing=True))
    assert between.startswith("The model server stopped sending for 60 s in the middle of the reply.")
    assert "MODEL_TOKEN_TIMEOUT" in between
