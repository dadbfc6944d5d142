"""A loopback TCP proxy for network-fault tests.

`TcpProxy` forwards 127.0.0.1:<port> to a target (host, port). It runs its own asyncio loop in its own daemon
thread, so it keeps working whatever the tests' event loops do (block, stop, get replaced). Its port never
changes. Faults can be switched at any time from any thread:

- `pass_through()` — forward everything (this is the initial mode);
- `refuse()` — stop listening (new connects get ECONNREFUSED) and reset every open connection;
- `blackhole()` — accept connections but forward and answer nothing, like a network partition: open
  connections stall with their data held back (as TCP would), and resume if the mode goes back to
  pass/delay;
- `delay(ms)` — forward with `ms` of one-way latency added to every chunk, in each direction, order preserved;
- `cut()` — reset (RST) every open connection now, keeping the mode for new ones.

Each control call returns once the change is in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import make_conninfo

__all__ = ["TcpProxy"]

_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 256
_CONTROL_TIMEOUT = 30.0

PASS, REFUSE, BLACKHOLE = "pass", "refuse", "blackhole"


def _rst_close(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One proxied connection and the tasks serving it (touched only in the proxy's thread)."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task] = set()
        self.closed = False

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        _rst_close(self.client)
        _rst_close(self.upstream)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.close()


class TcpProxy:
    """Loopback TCP proxy to ``(target_host, target_port)`` with switchable faults. Thread-safe."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        upstream_timeout: float = 10.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = int(target_port)
        self.host = listen_host
        self.port = 0
        self._upstream_timeout = upstream_timeout
        self._control = threading.Lock()
        self._closed = False
        # State below is only touched in the proxy thread.
        self._mode = PASS
        self._delay = 0.0
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._flowing: asyncio.Event | None = None

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._thread_main, name=f"TcpProxy->{target_host}:{target_port}", daemon=True
        )
        self._thread.start()
        try:
            self.port = self._call(self._astart())
        except BaseException:
            self.close()
            raise

    # -- public API (any thread) -------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def mode(self) -> str:
        """ "pass", "refuse" or "blackhole" (delay is pass with `delay_ms` > 0)."""
        return self._mode

    @property
    def delay_ms(self) -> float:
        return self._delay * 1000.0

    def pass_through(self) -> None:
        self._call(self._aset(PASS, 0.0))

    def refuse(self) -> None:
        self._call(self._aset(REFUSE, 0.0))

    def blackhole(self) -> None:
        self._call(self._aset(BLACKHOLE, self._delay))

    def delay(self, ms: float) -> None:
        if ms < 0:
            raise ValueError("delay must be >= 0 ms")
        self._call(self._aset(PASS, ms / 1000.0))

    def cut(self) -> None:
        self._call(self._acut())

    def active_connections(self) -> int:
        """Number of client connections currently held by the proxy."""
        return self._call(self._acount())

    def url_for(self, url: str) -> str:
        """`url` (a postgresql:// URL or a key=value conninfo) with host and port replaced by the proxy's."""
        if "://" in url:
            parts = urlsplit(url)
            userinfo, _, _ = parts.netloc.rpartition("@")
            netloc = (userinfo + "@" if userinfo else "") + f"{self.host}:{self.port}"
            return urlunsplit(parts._replace(netloc=netloc))
        return make_conninfo(url, host=self.host, port=str(self.port), hostaddr="")

    def close(self) -> None:
        """Reset every connection, stop listening and end the thread. Idempotent."""
        with self._control:
            if self._closed:
                return
            self._closed = True
        if self._loop.is_running() or self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._aclose(), self._loop).result(_CONTROL_TIMEOUT)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CONTROL_TIMEOUT)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TcpProxy {self.host}:{self.port} -> {self.target_host}:{self.target_port} "
            f"mode={self._mode} delay={self.delay_ms:g}ms>"
        )

    # -- plumbing ----------------------------------------------------------------------------------
    def _call(self, coro):
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("TcpProxy control methods cannot be called from the proxy's own thread")
        with self._control:
            if self._closed:
                coro.close()
                raise RuntimeError("TcpProxy is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(_CONTROL_TIMEOUT)

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    # -- coroutines run in the proxy thread --------------------------------------------------------
    async def _astart(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen(0)
        return self.port

    async def _listen(self, port: int) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, self.host, port, backlog=128)
        self.port = self._server.sockets[0].getsockname()[1]

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()  # closes the listening socket at once: new connects are refused
            self._server = None

    async def _aset(self, mode: str, delay: float) -> None:
        assert self._flowing is not None
        self._delay = delay
        self._mode = mode
        if mode == REFUSE:
            self._stop_listening()
            await self._acut()
            return
        await self._listen(self.port)
        if mode == BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _acut(self) -> None:
        for conn in list(self._conns):
            conn.reset()
        self._conns.clear()

    async def _acount(self) -> int:
        return len(self._conns)

    async def _aclose(self) -> None:
        self._stop_listening()
        await self._acut()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        conn = _Conn(writer)
        if self._mode == REFUSE:  # raced with refuse()
            conn.reset()
            return
        self._conns.add(conn)
        me = asyncio.current_task()
        if me is not None:
            conn.tasks.add(me)
        try:
            await self._flowing.wait()  # blackhole: hold the connection, say nothing
            try:
                up_reader, conn.upstream = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port), self._upstream_timeout
                )
            except (OSError, TimeoutError):
                conn.reset()  # upstream unreachable: the client sees its connection reset
                return
            if conn.closed:  # cut while connecting
                _rst_close(conn.upstream)
                return
            pumps = [
                asyncio.create_task(self._pump(conn, reader, conn.upstream)),
                asyncio.create_task(self._pump(conn, up_reader, writer)),
            ]
            conn.tasks.update(pumps)
            # Normally both directions end with EOF. If one fails (a reset, say), reset the whole connection
            # rather than leave the other direction waiting on a peer that will never speak.
            done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in done if not t.cancelled() and t.exception() is not None]
            if failed or pending:
                conn.reset()
                await asyncio.gather(*pending, return_exceptions=True)
            else:
                conn.close()
        except asyncio.CancelledError:
            conn.reset()
        finally:
            self._conns.discard(conn)

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction. Chunks are stamped with their due time when read and written in order."""
        assert self._flowing is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)

        async def read_side() -> None:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                await queue.put((loop.time() + self._delay, data))
                if not data:
                    return

        async def write_side() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(read_side()), asyncio.create_task(write_side())]
        conn.tasks.update(tasks)
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            conn.tasks.difference_update(tasks)
