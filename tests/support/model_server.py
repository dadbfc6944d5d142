"""A small but real OpenAI-compatible HTTP model server for tests.

Standard library only. The server runs ``http.server.ThreadingHTTPServer`` in a background
thread, so it is independent of whatever event loop a test uses, and talks genuine HTTP/1.1
(keep-alive, chunked transfer encoding for streams) to the real ``openai`` / ``langchain-openai``
client stack.

Typical use::

    with ModelServer() as server:
        llm = ChatOpenAI(base_url=server.base_url, api_key="x", model="test-model", streaming=True)
        ...

Replies are scripted. By default the reply to a chat request is ``"Echo: " + <last user text>``,
split into tokens that are words with their trailing whitespace (so ``"".join(tokens) == reply``).
``reply`` (a string, a list of explicit tokens, or a callable taking the request's ``messages``)
overrides that, ``token_count`` replaces it by N tokens of filler text, and ``token_delay`` puts a
delay between tokens.

Failures are queued per chat request (FIFO, one consumed by each ``POST /v1/chat/completions``):
``fail_next`` (OpenAI-style error JSON with a status), ``disconnect_next`` (stream N tokens, then
drop the socket without ``[DONE]``), ``stream_error_next`` (stream N tokens, then an error event inside the
HTTP 200 stream, as LiteLLM, vLLM and OpenAI report an upstream failure) and ``hang_next`` (never answer until
``close()``), ``stall_next`` (stream N tokens, then keep the stream open and send nothing until ``close()``).
``first_token_delay`` holds every stream that long between its role announcement and its first token (a local
server loading the model); ``fail_next(429, retry_after=...)`` sends a ``Retry-After`` header.

Synchronisation without sleeping: every request is recorded in ``requests`` and every notable
step in ``events``; ``wait_for_requests`` / ``wait_for_tokens`` / ``wait_for_paused`` block on a
condition variable (each has an ``*_async`` twin that does not block the event loop), and
``pause()`` / ``resume()`` hold every stream at its next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self

__all__ = [
    "DEFAULT_MODELS",
    "ModelServer",
    "RecordedRequest",
    "ReplySpec",
    "ServerEvent",
    "tokenize",
]

DEFAULT_MODELS: tuple[str, ...] = ("test-model", "other-model")

Message = dict[str, Any]
ReplySpec = str | Sequence[str] | Callable[[list[Message]], str | Sequence[str]]

_TOKEN_RE = re.compile(r"\s+|\S+\s*")
_ERROR_DEFAULTS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", None),
}


def tokenize(text: str) -> list[str]:
    """Split ``text`` into word tokens that keep their trailing whitespace.

    Leading whitespace becomes a token of its own, so ``"".join(tokenize(t)) == t`` always holds.
    """
    if not text:
        return []
    tokens = _TOKEN_RE.findall(text)
    if len(tokens) > 1 and tokens[0].isspace():
        tokens[1] = tokens[0] + tokens[1]
        del tokens[0]
    return tokens


def filler_tokens(count: int) -> list[str]:
    """``count`` tokens of deterministic filler text ("tok0 tok1 ... tokN-1")."""
    return [f"tok{i}" + (" " if i < count - 1 else "") for i in range(count)]


def message_text(message: Mapping[str, Any]) -> str:
    """The plain text of a chat message whose content is a string or a list of content parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return str(content)


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Text of the last ``role == "user"`` message, or ``""`` if there is none."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the server received it. Header names are lower-cased."""

    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> list[Message]:
        if isinstance(self.body, dict) and isinstance(self.body.get("messages"), list):
            return list(self.body["messages"])
        return []

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream")) if isinstance(self.body, dict) else False


EventKind = Literal[
    "request",  # a request was recorded (detail: path)
    "error",  # a JSON error response was sent (detail: status)
    "headers",  # a stream's response headers and role chunk were sent
    "token",  # a content token was sent (detail: 1-based token number within its stream)
    "paused",  # a stream is blocked at the pause gate (detail: tokens sent so far)
    "done",  # a response completed normally
    "disconnect",  # the socket was dropped on purpose (detail: tokens sent)
    "stream_error",  # an error event ended a 200 stream (detail: tokens sent before it)
    "hang",  # the request is being held without an answer
    "stall",  # a stream went silent on purpose (detail: tokens sent)
    "client_gone",  # the client closed the connection while we were writing
]


@dataclass(frozen=True)
class ServerEvent:
    kind: EventKind
    request_index: int
    detail: Any = None
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Fail:
    status: int
    message: str
    type: str
    code: str | None
    headers: Mapping[str, str]


@dataclass(frozen=True)
class _Disconnect:
    after_tokens: int


@dataclass(frozen=True)
class _Hang:
    pass


@dataclass(frozen=True)
class _Stall:
    after_tokens: int


@dataclass(frozen=True)
class _StreamError:
    after_tokens: int
    error: Mapping[str, Any]


_Action = _Fail | _Disconnect | _Hang | _StreamError | _Stall


class _ClientGone(Exception):
    """The peer closed the connection, or the server is closing."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # ModelServer.close() joins the handler threads itself, with a deadline.

    def __init__(self, owner: ModelServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connection errors are expected (disconnects, close()); anything else is worth seeing.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | _ClientGone) or self.owner.closing:
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CairnTestModelServer/1.0"
    server: _HTTPServer

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def owner(self) -> ModelServer:
        return self.server.owner

    def setup(self) -> None:
        super().setup()
        self.owner._register_connection(self.connection, threading.current_thread())

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.owner._unregister_connection(self.connection)

    def handle_one_request(self) -> None:
        if self.owner.closing:
            self.close_connection = True
            return
        try:
            super().handle_one_request()
        except (OSError, _ClientGone):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _read_body(self) -> tuple[Any, str | None]:
        """The parsed JSON body (None if empty) and a parse error message, if any."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw:
            return None, None
        try:
            return json.loads(raw), None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"Invalid JSON body: {exc}"

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc

    def _send_json(self, status: int, payload: Any, *, extra_headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._write(body)

    def _send_error_json(
        self,
        index: int,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        code: str | None = None,
        param: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        default_type, default_code = _ERROR_DEFAULTS.get(status, ("api_error", None))
        payload = {
            "error": {
                "message": message,
                "type": type_ or default_type,
                "param": param,
                "code": code if code is not None else default_code,
            }
        }
        self._send_json(status, payload, extra_headers=extra_headers)
        self.owner._emit("error", index, status)

    def _check_auth(self, index: int) -> bool:
        key = self.owner.api_key
        if key is None:
            return True
        header = self.headers.get("Authorization", "")
        if header == f"Bearer {key}":
            return True
        shown = header.removeprefix("Bearer ").strip()
        masked = f"{shown[:3]}***{shown[-2:]}" if len(shown) > 5 else "***"
        self._send_error_json(
            index,
            401,
            f"Incorrect API key provided: {masked}.",
            type_="invalid_request_error",
            code="invalid_api_key",
        )
        return False

    # -- routes -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        index = self.owner._record(self.command, self.path, self.headers.items(), None)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            if not self._check_auth(index):
                return
            if self.owner.models_answer is not None:
                status, content_type, body = self.owner.models_answer
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self._write(body)
                self.owner._emit("done", index)
                return
            created = self.owner.created
            data = [
                {"id": model, "object": "model", "created": created, "owned_by": "cairn-test"}
                for model in self.owner.models
            ]
            self._send_json(200, {"object": "list", "data": data})
            self.owner._emit("done", index)
            return
        if path.startswith(("/v1/models/", "/models/")):
            if not self._check_auth(index):
                return
            model = path.rsplit("/", 1)[1]
            if model in self.owner.models:
                body = {
                    "id": model,
                    "object": "model",
                    "created": self.owner.created,
                    "owned_by": "cairn-test",
                }
                self._send_json(200, body)
                self.owner._emit("done", index)
            else:
                self._model_not_found(index, model)
            return
        self._send_error_json(index, 404, f"Unknown path: {self.path}", code="unknown_url")

    def do_POST(self) -> None:
        body, parse_error = self._read_body()
        index = self.owner._record(self.command, self.path, self.headers.items(), body)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._send_error_json(index, 404, f"Unknown path: {self.path}", code="unknown_url")
            return
        if not self._check_auth(index):
            return
        action = self.owner._pop_action()
        if isinstance(action, _Fail):
            self._send_error_json(
                index,
                action.status,
                action.message,
                type_=action.type,
                code=action.code,
                extra_headers=action.headers,
            )
            return
        if isinstance(action, _Hang):
            self._hang(index)
            return
        if parse_error is not None or not isinstance(body, dict):
            self._send_error_json(index, 400, parse_error or "Request body must be a JSON object.")
            return
        messages = body.get("messages")
        if not isinstance(messages, list):
            self._send_error_json(index, 400, "'messages' is a required property.", param="messages")
            return
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._send_error_json(index, 400, "'model' is a required property.", param="model")
            return
        if self.owner.strict_models and model not in self.owner.models:
            self._model_not_found(index, model)
            return
        tokens = self.owner._reply_tokens(messages)
        after = action.after_tokens if isinstance(action, _Disconnect) else None
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
            error = action if isinstance(action, _StreamError) else None
            stall = action.after_tokens if isinstance(action, _Stall) else None
            self._stream(
                index,
                model,
                messages,
                tokens,
                include_usage=include_usage,
                disconnect_after=after,
                error=error,
                stall_after=stall,
            )
        else:
            self._complete(index, model, messages, tokens, disconnect=after is not None)

    # -- responses --------------------------------------------------------------------------------

    def _model_not_found(self, index: int, model: str) -> None:
        self._send_error_json(
            index,
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            type_="invalid_request_error",
            code="model_not_found",
        )

    def _hang(self, index: int) -> None:
        self.owner._emit("hang", index)
        self.owner._wait_until_closing()
        self._drop()

    def _drop(self) -> None:
        """Close the socket abruptly, mid-response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _usage(self, messages: list[Message], tokens: Sequence[str]) -> dict[str, int]:
        prompt = sum(len(tokenize(message_text(m))) + 3 for m in messages if isinstance(m, dict))
        completion = len(tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _complete(
        self, index: int, model: str, messages: list[Message], tokens: list[str], *, disconnect: bool
    ) -> None:
        self.owner._gate(index, 0)
        if disconnect:
            self.owner._emit("disconnect", index, 0)
            self._drop()
            return
        delay = self.owner.token_delay
        if delay > 0 and tokens and self.owner._closing_event.wait(delay * len(tokens)):
            self._drop()
            return
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(messages, tokens),
        }
        self._send_json(200, payload)
        self.owner._emit("done", index)

    def _stream(
        self,
        index: int,
        model: str,
        messages: list[Message],
        tokens: list[str],
        *,
        include_usage: bool,
        disconnect_after: int | None,
        error: _StreamError | None = None,
        stall_after: int | None = None,
    ) -> None:
        owner = self.owner
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                data["usage"] = None
            return data

        def send_event(data: Any) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            payload = f"data: {text}\n\n".encode()
            self._write(b"%X\r\n%s\r\n" % (len(payload), payload))

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        self.end_headers()
        try:
            send_event(chunk({"role": "assistant", "content": "", "refusal": None}))
            owner._emit("headers", index)
            for n, thought in enumerate(tokenize(owner.reasoning)):  # at the pace of the answer's tokens
                if n and owner.token_delay > 0 and owner._closing_event.wait(owner.token_delay):
                    raise _ClientGone("server closing")
                send_event(chunk({"content": None, "reasoning_content": thought}))
            sent = 0
            for token in tokens:
                if disconnect_after is not None and sent >= disconnect_after:
                    break
                if error is not None and sent >= error.after_tokens:
                    break
                if stall_after is not None and sent >= stall_after:
                    owner._emit("stall", index, sent)
                    owner._wait_until_closing()
                    raise _ClientGone("server closing")
                if sent and owner.token_delay > 0 and owner._closing_event.wait(owner.token_delay):
                    raise _ClientGone("server closing")
                if not sent and owner.first_token_delay > 0 and owner._closing_event.wait(owner.first_token_delay):
                    raise _ClientGone("server closing")
                owner._gate(index, sent)
                send_event(chunk({"content": token}))
                sent += 1
                owner._token_sent(index, sent)
            if disconnect_after is not None:
                owner._emit("disconnect", index, sent)
                self._drop()
                return
            if error is not None:
                # The status was 200 long ago: the failure can only be told as an event, then the stream ends.
                send_event({"error": dict(error.error)})
                self._write(b"0\r\n\r\n")
                owner._emit("stream_error", index, sent)
                return
            owner._gate(index, sent)
            send_event(chunk({}, "stop"))
            if include_usage:
                usage_chunk = chunk({})
                usage_chunk["choices"] = []
                usage_chunk["usage"] = self._usage(messages, [*tokenize(owner.reasoning), *tokens])
                send_event(usage_chunk)
            send_event("[DONE]")
            self._write(b"0\r\n\r\n")
            owner._emit("done", index)
        except _ClientGone:
            owner._emit("client_gone", index)
            self._drop()


class ModelServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1, running in a background thread."""

    def __init__(
        self,
        models: Iterable[str] = DEFAULT_MODELS,
        *,
        reply: ReplySpec | None = None,
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        token_count: int | None = None,
        api_key: str | None = None,
        strict_models: bool = True,
    ) -> None:
        self.models: list[str] = list(models)
        self.reply: ReplySpec | None = reply
        self.models_answer: tuple[int, str, bytes] | None = None
        """When set, ``GET /models`` answers this (status, content type, body) instead of the model list: a web server,
        a proxy or another API at the model server's address."""
        self.reasoning: str = ""
        """Streamed first as ``delta.reasoning_content`` tokens (``token_delay`` apart, as the answer's), as thinking
        models behind Ollama, vLLM, LM Studio and DeepSeek's API send their reasoning (a reply holding
        ``<think>...</think>`` is the other way servers do it)."""
        self.token_delay: float = token_delay
        self.first_token_delay: float = first_token_delay
        self.token_count: int | None = token_count
        self.api_key: str | None = api_key
        self.strict_models: bool = strict_models
        self.created: int = int(time.time())

        self._cond = threading.Condition()
        self._closing_event = threading.Event()
        self._requests: list[RecordedRequest] = []
        self._events: list[ServerEvent] = []
        self._actions: deque[_Action] = deque()
        self._tokens_sent = 0
        self._paused = False
        self._pause_after: int | None = None
        self._paused_streams = 0
        self._async_waiters: list[Callable[[], bool]] = []
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._closed:
            raise RuntimeError("ModelServer cannot be restarted after close()")
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"model-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server. Releases hanging and paused requests and drops open connections."""
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._closing_event.set()
            self._notify_locked()
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        httpd.shutdown()
        thread.join(timeout)
        with self._cond:
            connections = dict(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for handler_thread in connections.values():
            handler_thread.join(max(0.0, deadline - time.monotonic()))
        httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)

    @property
    def closing(self) -> bool:
        return self._closing_event.is_set()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("ModelServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting --------------------------------------------------------------------------------

    def fail_next(
        self,
        status: int = 500,
        message: str | None = None,
        *,
        type: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: str | float | None = None,
    ) -> None:
        """The next chat request gets an OpenAI-style error JSON with ``status``; ``retry_after`` (seconds, or an
        HTTP date as text) becomes its ``Retry-After`` header, as a rate-limited server says when to come back."""
        default_type, default_code = _ERROR_DEFAULTS.get(status, ("api_error", None))
        if message is None:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "error"
            message = f"Scripted error {status}: {phrase}"
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        fail = _Fail(status, message.strip(), type or default_type, code or default_code, extra)
        self._push(fail)

    def disconnect_next(self, after_tokens: int = 0) -> None:
        """The next chat request streams ``after_tokens`` tokens, then the socket is dropped (no [DONE])."""
        self._push(_Disconnect(after_tokens))

    def stream_error_next(
        self, message: str = "Upstream model failed", *, after_tokens: int = 0, code: str | int | None = None
    ) -> None:
        """The next chat request starts an HTTP 200 stream, sends ``after_tokens`` tokens, then
        ``data: {"error": {"message": ...}}`` and ends the stream (no finish chunk, no [DONE])."""
        error: dict[str, Any] = {"message": message, "type": "api_error", "param": None, "code": code}
        self._push(_StreamError(after_tokens, error))

    def hang_next(self) -> None:
        """The next chat request is accepted but never answered (until ``close()``)."""
        self._push(_Hang())

    def stall_next(self, after_tokens: int = 0) -> None:
        """The next chat request streams ``after_tokens`` tokens, then sends nothing more, the stream left open,
        until ``close()`` (a server stuck in the middle of a reply)."""
        self._push(_Stall(after_tokens))

    def clear_scripted(self) -> None:
        with self._cond:
            self._actions.clear()

    @property
    def pending_scripted(self) -> int:
        with self._cond:
            return len(self._actions)

    def reply_tokens_for(self, messages: list[Message]) -> list[str]:
        """The tokens the server would stream for ``messages`` under the current settings."""
        return self._reply_tokens(messages)

    def reply_for(self, messages: list[Message]) -> str:
        return "".join(self._reply_tokens(messages))

    # -- pause / resume ---------------------------------------------------------------------------

    def pause(self, after_tokens: int | None = None) -> None:
        """Hold streams before their next token.

        With ``after_tokens=N`` the pause is armed instead and takes effect as soon as a stream has
        sent its N-th token, so a test can stop a stream at an exact position.
        Non-streaming responses are held too (before the body is sent).
        """
        with self._cond:
            if after_tokens is None:
                self._paused = True
                self._pause_after = None
            else:
                self._pause_after = after_tokens
                self._paused = after_tokens <= 0
            self._notify_locked()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._pause_after = None
            self._notify_locked()

    @property
    def paused(self) -> bool:
        with self._cond:
            return self._paused

    @property
    def paused_streams(self) -> int:
        """How many responses are currently blocked at the pause gate."""
        with self._cond:
            return self._paused_streams

    # -- observation ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._cond:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.rstrip("/").endswith("/chat/completions")]

    @property
    def events(self) -> list[ServerEvent]:
        with self._cond:
            return list(self._events)

    @property
    def tokens_sent(self) -> int:
        """Content tokens sent so far, over all streams."""
        with self._cond:
            return self._tokens_sent

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
        """Block until ``predicate()`` (evaluated under the server lock) is true; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"ModelServer: timed out after {timeout}s waiting for {what}")

    def wait_for_requests(self, n: int = 1, timeout: float = 5.0, *, path: str | None = None) -> list[RecordedRequest]:
        """Wait until at least ``n`` requests (optionally only those to ``path``) have been received."""

        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if path is None or r.path == path]

        self.wait_until(lambda: len(matching()) >= n, timeout, f"{n} request(s)")
        with self._cond:
            return matching()

    def wait_for_tokens(self, n: int, timeout: float = 5.0) -> None:
        """Wait until at least ``n`` content tokens have been sent (over all streams)."""
        self.wait_until(lambda: self._tokens_sent >= n, timeout, f"{n} token(s) sent")

    def wait_for_paused(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least ``n`` responses are blocked at the pause gate."""
        self.wait_until(lambda: self._paused_streams >= n, timeout, f"{n} paused stream(s)")

    def wait_for_event(
        self, kind: EventKind, timeout: float = 5.0, *, count: int = 1, request_index: int | None = None
    ) -> ServerEvent:
        """Wait for the ``count``-th event of ``kind`` (optionally for one request) and return it."""

        def matching() -> list[ServerEvent]:
            return [
                e
                for e in self._events
                if e.kind == kind and (request_index is None or e.request_index == request_index)
            ]

        self.wait_until(lambda: len(matching()) >= count, timeout, f"event {kind!r} x{count}")
        with self._cond:
            return matching()[count - 1]

    # The async twins never block the event loop: the server thread wakes them through
    # ``loop.call_soon_threadsafe``. ``timeout`` bounds the wait so a broken test fails instead of hanging.

    async def wait_until_async(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
        what: str = "condition",
    ) -> None:
        """Async ``wait_until``: ``predicate()`` is evaluated under the server lock."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        def check() -> bool:
            if not predicate():
                return False
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                loop.call_soon_threadsafe(wake)
            return True

        with self._cond:
            if predicate():
                return
            self._async_waiters.append(check)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise TimeoutError(f"ModelServer: timed out after {timeout}s waiting for {what}") from None
        finally:
            with self._cond, contextlib.suppress(ValueError):
                self._async_waiters.remove(check)

    async def wait_for_requests_async(
        self,
        n: int = 1,
        timeout: float = 5.0,
        *,
        path: str | None = None,
    ) -> list[RecordedRequest]:
        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if path is None or r.path == path]

        await self.wait_until_async(lambda: len(matching()) >= n, timeout, f"{n} request(s)")
        with self._cond:
            return matching()

    async def wait_for_tokens_async(self, n: int, timeout: float = 5.0) -> None:
        await self.wait_until_async(lambda: self._tokens_sent >= n, timeout, f"{n} token(s) sent")

    async def wait_for_paused_async(self, n: int = 1, timeout: float = 5.0) -> None:
        await self.wait_until_async(lambda: self._paused_streams >= n, timeout, f"{n} paused stream(s)")

    async def wait_for_event_async(
        self,
        kind: EventKind,
        timeout: float = 5.0,
        *,
        count: int = 1,
        request_index: int | None = None,
    ) -> ServerEvent:
        def matching() -> list[ServerEvent]:
            return [
                e
                for e in self._events
                if e.kind == kind and (request_index is None or e.request_index == request_index)
            ]

        await self.wait_until_async(lambda: len(matching()) >= count, timeout, f"event {kind!r} x{count}")
        with self._cond:
            return matching()[count - 1]

    # -- internals (called from handler threads) --------------------------------------------------

    def _notify_locked(self) -> None:
        """Wake sync and async waiters. Caller holds ``self._cond``."""
        self._cond.notify_all()
        if self._async_waiters:
            self._async_waiters[:] = [check for check in self._async_waiters if not check()]

    def _push(self, action: _Action) -> None:
        with self._cond:
            self._actions.append(action)

    def _pop_action(self) -> _Action | None:
        with self._cond:
            return self._actions.popleft() if self._actions else None

    def _record(self, method: str, path: str, headers: Iterable[tuple[str, str]], body: Any) -> int:
        with self._cond:
            index = len(self._requests)
            header_map = {name.lower(): value for name, value in headers}
            self._requests.append(RecordedRequest(index, method, path, header_map, body))
            self._events.append(ServerEvent("request", index, path))
            self._notify_locked()
            return index

    def _emit(self, kind: EventKind, index: int, detail: Any = None) -> None:
        with self._cond:
            self._events.append(ServerEvent(kind, index, detail))
            self._notify_locked()

    def _token_sent(self, index: int, number: int) -> None:
        with self._cond:
            self._tokens_sent += 1
            self._events.append(ServerEvent("token", index, number))
            if self._pause_after is not None and number >= self._pause_after:
                self._paused = True
                self._pause_after = None
            self._notify_locked()

    def _gate(self, index: int, sent: int) -> None:
        """Block while paused; raise _ClientGone if the server closes meanwhile."""
        with self._cond:
            if self._paused and not self.closing:
                self._paused_streams += 1
                self._events.append(ServerEvent("paused", index, sent))
                self._notify_locked()
                try:
                    self._cond.wait_for(lambda: not self._paused or self.closing)
                finally:
                    self._paused_streams -= 1
            if self.closing:
                raise _ClientGone("server closing")

    def _wait_until_closing(self) -> None:
        self._closing_event.wait()

    def _reply_tokens(self, messages: list[Message]) -> list[str]:
        if self.token_count is not None:
            return filler_tokens(self.token_count)
        reply = self.reply
        if reply is None:
            return tokenize("Echo: " + last_user_text(messages))
        if callable(reply):
            reply = reply(messages)
        if isinstance(reply, str):
            return tokenize(reply)
        return [str(token) for token in reply]

    def _register_connection(self, conn: socket.socket, thread: threading.Thread) -> None:
        with self._cond:
            self._connections[conn] = thread

    def _unregister_connection(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.pop(conn, None)
