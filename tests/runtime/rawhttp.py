"""HTTP/1.1 over a plain socket, for what an HTTP client library will not do: stall in the middle of a body,
or leave a response unread so that the server's writes block."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

import h11


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    complete: bool = False  # the whole message arrived (not cut off by a closed connection)
    closed: bool = False  # the server closed the connection after it


@dataclass
class RawConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))

    @classmethod
    async def open(cls, port: int, *, receive_buffer: int | None = None, read_limit: int = 2**16) -> RawConnection:
        """`receive_buffer` (bytes) fixes the socket's buffer; with a small `read_limit` an unread response stops the server."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: sets the window
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=read_limit)
        except BaseException:
            sock.close()
            raise
        return cls(reader, writer)

    async def start(self, method: str, path: str, headers: dict[str, str]) -> None:
        """Send the request line and headers (give `content-length`, or `transfer-encoding: chunked`)."""
        request = h11.Request(method=method, target=path, headers=[("host", "runtime"), *headers.items()])
        await self._write(self.http.send(request))

    async def send_body(self, data: bytes, *, end: bool = False) -> None:
        payload = self.http.send(h11.Data(data=data)) or b""
        if end:
            payload += self.http.send(h11.EndOfMessage()) or b""
        await self._write(payload)

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        await self.start(method, path, {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})})
        await self.send_body(body, end=True)

    async def response(self) -> RawResponse:
        """The next response, read until it ends or the server closes the connection."""
        result: RawResponse | None = None
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                self.http.receive_data(data)
                if not data and result is not None:
                    result.closed = True
                    return result
                continue
            if isinstance(event, h11.Response):
                result = RawResponse(event.status_code, {k.decode(): v.decode() for k, v in event.headers})
            elif isinstance(event, h11.Data) and result is not None:
                result.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) and result is not None:
                result.complete = True
                if self.http.their_state is h11.MUST_CLOSE or result.headers.get("connection") == "close":
                    result.closed = await self.reader.read(1) == b""
                return result
            elif isinstance(event, h11.ConnectionClosed):
                if result is None:
                    raise ConnectionError("the server closed the connection without a response")
                result.closed = True
                return result

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):  # the server closed it already
            await self.writer.wait_closed()
