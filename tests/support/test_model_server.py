"""The scripted OpenAI-compatible test server, exercised through the real client stack."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from tests.support.model_server import ModelServer, filler_tokens, tokenize
from tests.support.waiting import eventually


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as srv:
        yield srv


@pytest.fixture
async def client(server: ModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as c:
        yield c


def chat(server: ModelServer, *, streaming: bool = True, **kwargs: Any) -> ChatOpenAI:
    options: dict[str, Any] = {"api_key": "x", "model": "test-model", "max_retries": 0}
    options.update(kwargs)
    return ChatOpenAI(base_url=server.base_url, streaming=streaming, **options)


async def stream_tokens(llm: ChatOpenAI, prompt: str) -> list[str]:
    tokens: list[str] = []
    async for chunk in llm.astream(prompt):
        assert isinstance(chunk, AIMessageChunk)
        if chunk.content:
            assert isinstance(chunk.content, str)
            tokens.append(chunk.content)
    return tokens


# -- happy paths ----------------------------------------------------------------------------------


def test_tokenize_round_trips() -> None:
    for text in ["", "one", "Echo: hello  there\nworld ", "  leading", "a\tb"]:
        assert "".join(tokenize(text)) == text
    assert tokenize("Echo: hi there") == ["Echo: ", "hi ", "there"]
    assert "".join(filler_tokens(3)) == "tok0 tok1 tok2"


async def test_astream_yields_the_scripted_tokens_in_order(server: ModelServer) -> None:
    tokens = await stream_tokens(chat(server), "hello there  world")

    assert tokens == ["Echo: ", "hello ", "there  ", "world"]
    assert "".join(tokens) == "Echo: hello there  world"
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer x"
    assert request.stream is True
    assert request.model == "test-model"
    assert request.messages[-1] == {"role": "user", "content": "hello there  world"}
    # The server notes the end after the last bytes went out, which the client may have read already.
    await server.wait_for_event_async("done")
    assert [e.kind for e in server.events][-1] == "done"
    assert server.tokens_sent == 4


async def test_reply_overrides(server: ModelServer) -> None:
    llm = chat(server)

    server.reply = "Fixed answer, always."
    assert "".join(await stream_tokens(llm, "q")) == "Fixed answer, always."

    server.reply = ["ex", "act", " tokens"]
    assert await stream_tokens(llm, "q") == ["ex", "act", " tokens"]

    server.reply = lambda messages: f"{len(messages)} message(s), last: {messages[-1]['content']}"
    assert "".join(await stream_tokens(llm, "ping")) == "1 message(s), last: ping"

    server.token_count = 25
    tokens = await stream_tokens(llm, "q")
    assert tokens == filler_tokens(25)


async def test_token_delay_spaces_out_tokens(server: ModelServer) -> None:
    server.token_delay = 0.05
    started = time.monotonic()
    tokens = await stream_tokens(chat(server), "a b c d")
    assert len(tokens) == 5
    assert time.monotonic() - started >= 4 * 0.05


async def test_ainvoke_without_streaming(server: ModelServer) -> None:
    message = await chat(server, streaming=False).ainvoke("how are you")

    assert message.content == "Echo: how are you"
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.response_metadata["model_name"] == "test-model"
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == 4
    assert server.requests[-1].stream is False


async def test_chunk_format_and_usage(server: ModelServer, client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="other-model",
        messages=[{"role": "user", "content": "one two"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == "other-model" for c in chunks)
    assert all(c.created > 0 for c in chunks)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == ["Echo: ", "one ", "two"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 3
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + 3


async def test_wire_format_is_chunked_sse_ending_with_done(server: ModelServer) -> None:
    body = {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", f"{server.base_url}/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]

    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0].removeprefix("data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] == "stop"


async def test_models_list(client: openai.AsyncOpenAI, server: ModelServer) -> None:
    models = [model async for model in client.models.list()]

    assert [m.id for m in models] == ["test-model", "other-model"]
    assert all(m.owned_by == "cairn-test" and m.object == "model" for m in models)
    assert server.requests[-1].method == "GET"
    assert server.requests[-1].path == "/v1/models"


async def test_models_list_is_configurable() -> None:
    async with (
        ModelServer(models=["alpha", "beta", "gamma"]) as srv,
        openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0) as c,
    ):
        assert [m.id async for m in c.models.list()] == ["alpha", "beta", "gamma"]


# -- scripted errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (401, openai.AuthenticationError, "invalid_api_key"),
        (404, openai.NotFoundError, "model_not_found"),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (500, openai.InternalServerError, None),
    ],
)
async def test_fail_next_maps_to_openai_errors(
    server: ModelServer,
    client: openai.AsyncOpenAI,
    status: int,
    error_type: type[openai.APIStatusError],
    code: str,
) -> None:
    server.fail_next(status, "scripted failure")

    with pytest.raises(error_type) as info:
        await client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])

    assert info.value.status_code == status
    assert info.value.code == code
    assert "scripted failure" in info.value.message
    # The failure was consumed: the next request succeeds.
    reply = await client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "y"}])
    assert reply.choices[0].message.content == "Echo: y"


async def test_fail_next_through_langchain_is_fifo(server: ModelServer) -> None:
    server.fail_next(401, "bad key")
    server.fail_next(500, "boom")
    llm = chat(server)

    with pytest.raises(openai.AuthenticationError, match="bad key"):
        await stream_tokens(llm, "a")
    with pytest.raises(openai.InternalServerError, match="boom"):
        await stream_tokens(llm, "b")
    assert "".join(await stream_tokens(llm, "c")) == "Echo: c"
    assert server.pending_scripted == 0


async def test_unknown_model_is_not_found(server: ModelServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await stream_tokens(chat(server, model="no-such-model"), "x")
    assert info.value.code == "model_not_found"
    assert "no-such-model" in info.value.message

    server.strict_models = False
    assert "".join(await stream_tokens(chat(server, model="no-such-model"), "x")) == "Echo: x"


async def test_disconnect_mid_stream(server: ModelServer) -> None:
    server.token_count = 10
    server.disconnect_next(after_tokens=3)
    received: list[str] = []

    with pytest.raises(openai.APIConnectionError):
        async for chunk in chat(server).astream("x"):
            if chunk.content:
                received.append(str(chunk.content))

    assert received == filler_tokens(10)[:3]
    assert (await server.wait_for_event_async("disconnect")).detail == 3
    # Only that one request was affected.
    assert await stream_tokens(chat(server), "x") == filler_tokens(10)


async def test_stream_error_inside_a_200_stream(server: ModelServer) -> None:
    server.token_count = 10
    server.stream_error_next("Upstream model failed", after_tokens=3)
    received: list[str] = []

    with pytest.raises(openai.APIError) as raised:
        async for chunk in chat(server).astream("x"):
            if chunk.content:
                received.append(str(chunk.content))

    assert type(raised.value) is openai.APIError  # not a status or connection error: the stream said 200
    assert raised.value.message == "Upstream model failed"
    assert received == filler_tokens(10)[:3]
    assert (await server.wait_for_event_async("stream_error")).detail == 3
    assert await stream_tokens(chat(server), "x") == filler_tokens(10)  # only that one request was affected


async def test_stall_sends_some_tokens_then_nothing_with_the_stream_open(server: ModelServer) -> None:
    server.token_count = 10
    server.stall_next(after_tokens=3)
    received: list[str] = []

    async def read() -> None:
        # No chunk timeout: its asyncio.wait_for would swallow the cancel below (CPython gh-86296, chat/endpoints.py).
        async for chunk in chat(server, stream_chunk_timeout=None).astream("x"):
            if chunk.content:
                received.append(str(chunk.content))

    reading = asyncio.create_task(read())
    assert (await server.wait_for_event_async("stall")).detail == 3
    await eventually(lambda: len(received) == 3, 5.0, "the three tokens read")
    assert not reading.done()  # open, silent: neither finished nor dropped
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert received == filler_tokens(10)[:3]
    assert await stream_tokens(chat(server), "x") == filler_tokens(10)  # only that one request was affected


async def test_first_token_delay_holds_the_first_token_after_the_headers(server: ModelServer) -> None:
    server.first_token_delay = 0.5
    server.reply = "one two"
    started = time.monotonic()
    assert await stream_tokens(chat(server), "x") == ["one ", "two"]
    index = server.chat_requests[-1].index
    headers = next(e.at for e in server.events if e.request_index == index and e.kind == "headers")
    first = next(e.at for e in server.events if e.request_index == index and e.kind == "token")
    assert first - headers >= 0.5  # the headers and the role chunk come at once, the first token after the delay
    assert time.monotonic() - started >= 0.5


async def test_fail_next_with_retry_after(server: ModelServer) -> None:
    server.fail_next(429, retry_after=20)
    server.fail_next(429, retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
    async with httpx.AsyncClient() as http:
        body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}]}
        first = await http.post(server.base_url + "/chat/completions", json=body)
        second = await http.post(server.base_url + "/chat/completions", json=body)
    assert (first.status_code, first.headers["retry-after"]) == (429, "20")
    assert (second.status_code, second.headers["retry-after"]) == (429, "Wed, 21 Oct 2026 07:28:00 GMT")


async def test_hang_times_out_on_the_client() -> None:
    srv = ModelServer().start()
    try:
        srv.hang_next()
        with pytest.raises(openai.APITimeoutError):
            await chat(srv, timeout=1.0).ainvoke("x")
        await srv.wait_for_event_async("hang")
    finally:
        started = time.monotonic()
        await asyncio.to_thread(srv.close)
        assert time.monotonic() - started < 2.0


async def test_api_key_enforcement() -> None:
    async with ModelServer(api_key="sekrit") as srv:
        with pytest.raises(openai.AuthenticationError) as info:
            await stream_tokens(chat(srv, api_key="wrong"), "x")
        assert info.value.code == "invalid_api_key"

        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError):
                await c.models.list()

        assert "".join(await stream_tokens(chat(srv, api_key="sekrit"), "x")) == "Echo: x"
        assert srv.requests[-1].headers["authorization"] == "Bearer sekrit"


# -- synchronisation ------------------------------------------------------------------------------


async def test_pause_holds_a_stream_mid_way(server: ModelServer) -> None:
    server.token_count = 6
    server.pause(after_tokens=2)
    received: asyncio.Queue[str] = asyncio.Queue()

    async def consume() -> list[str]:
        tokens: list[str] = []
        async for chunk in chat(server).astream("x"):
            if chunk.content:
                tokens.append(str(chunk.content))
                received.put_nowait(str(chunk.content))
        return tokens

    task = asyncio.create_task(consume())
    await server.wait_for_paused_async()
    assert [await received.get(), await received.get()] == filler_tokens(6)[:2]
    # The server is holding the stream: exactly two tokens went out, and the client has no more.
    assert server.tokens_sent == 2
    assert server.paused_streams == 1
    assert received.empty()
    assert not task.done()

    server.resume()
    tokens = await asyncio.wait_for(task, 5)
    assert tokens == filler_tokens(6)
    assert server.paused_streams == 0


async def test_pause_before_the_first_token(server: ModelServer) -> None:
    server.pause()
    task = asyncio.create_task(stream_tokens(chat(server), "held"))

    [request] = await server.wait_for_requests_async(1)
    assert request.messages[-1]["content"] == "held"
    await server.wait_for_paused_async()
    assert server.tokens_sent == 0
    assert (await server.wait_for_event_async("paused")).detail == 0

    server.resume()
    assert "".join(await asyncio.wait_for(task, 5)) == "Echo: held"


async def test_wait_for_tokens(server: ModelServer) -> None:
    server.token_count = 4
    task = asyncio.create_task(stream_tokens(chat(server), "x"))
    await server.wait_for_tokens_async(4)
    assert await asyncio.wait_for(task, 5) == filler_tokens(4)

    with pytest.raises(TimeoutError):
        await server.wait_for_tokens_async(5, timeout=0.05)


def test_sync_api_from_a_plain_thread() -> None:
    """The server needs no event loop: a synchronous client and the blocking waits work too."""
    with (
        ModelServer() as srv,
        openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0) as c,
    ):
        reply = c.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "sync"}])
        assert reply.choices[0].message.content == "Echo: sync"
        assert len(srv.wait_for_requests(1, timeout=1)) == 1
        with pytest.raises(TimeoutError):
            srv.wait_for_requests(2, timeout=0.05)


async def test_close_releases_paused_and_hanging_requests() -> None:
    srv = ModelServer().start()
    srv.pause()
    srv.hang_next()
    hanging = asyncio.create_task(stream_tokens(chat(srv), "hang"))
    await srv.wait_for_event_async("hang")
    paused = asyncio.create_task(stream_tokens(chat(srv), "paused"))
    await srv.wait_for_paused_async()

    started = time.monotonic()
    await asyncio.to_thread(srv.close)
    assert time.monotonic() - started < 2.0

    results = await asyncio.wait_for(asyncio.gather(hanging, paused, return_exceptions=True), 5)
    assert all(isinstance(result, openai.APIConnectionError) for result in results), results
    srv.close()  # idempotent
