"""A deliberately small PostgreSQL wire-protocol client over a plain socket.

Drivers hide what the tests here need to control: malformed messages, abrupt disconnects,
and reading a huge result slowly in small chunks. Only trust (or cleartext) login is
supported, which is what the test proxies ask for.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

PROTOCOL_3_0 = 196608


def free_port() -> int:
    """A TCP port nobody listens on right now (and that nobody will, for a while)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def message(type_byte: bytes, payload: bytes = b"") -> bytes:
    return type_byte + struct.pack("!I", len(payload) + 4) + payload


def startup_packet(parameters: dict[str, str], code: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", code)
    for key, value in parameters.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def query_message(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def error_fields(payload: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse payload -> {field code: value}."""
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


class ConnectionClosed(Exception):
    """The peer closed the connection."""


class RawClient:
    """One connection; ``read_message`` returns ``(type, payload)``."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()
        self.parameters: dict[str, str] = {}
        self.backend_key: tuple[int, bytes] | None = None

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Vanish as a killed process does: no Terminate, RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, size: int = 65536) -> None:
        chunk = self.sock.recv(size)
        if not chunk:
            raise ConnectionClosed(f"closed with {len(self._buffer)} bytes unread")
        self._buffer += chunk

    def read_message(self) -> tuple[bytes, bytes]:
        while len(self._buffer) < 5:
            self._fill()
        length = struct.unpack_from("!I", self._buffer, 1)[0]
        while len(self._buffer) < 1 + length:
            self._fill()
        type_byte = bytes(self._buffer[:1])
        payload = bytes(self._buffer[5 : 1 + length])
        del self._buffer[: 1 + length]
        return type_byte, payload

    def messages_until_ready(self) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            msg = self.read_message()
            out.append(msg)
            if msg[0] == b"Z":
                return out

    def startup(self, user: str, database: str, password: str = "", **params: str) -> None:
        """Log in and read up to the first ReadyForQuery; raises on an ErrorResponse."""
        self.send(startup_packet({"user": user, "database": database, **params}))
        while True:
            type_byte, payload = self.read_message()
            if type_byte == b"R":
                code = struct.unpack_from("!I", payload)[0]
                if code == 3:
                    self.send(message(b"p", password.encode() + b"\0"))
                elif code != 0:
                    raise RuntimeError(f"unsupported authentication request {code}")
            elif type_byte == b"S":
                name, value, _ = payload.split(b"\0", 2)
                self.parameters[name.decode()] = value.decode()
            elif type_byte == b"K":
                pid, secret = struct.unpack_from("!I", payload)[0], payload[4:]
                self.backend_key = (pid, secret)
            elif type_byte == b"E":
                raise RuntimeError(f"login failed: {error_fields(payload)}")
            elif type_byte == b"Z":
                return

    def simple_query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.send(query_message(sql))
        return self.messages_until_ready()

    def read_until_closed(self, timeout: float = 10.0) -> bytes:
        """Everything the peer sends until it closes; raises socket.timeout if it does not."""
        self.sock.settimeout(timeout)
        data = bytes(self._buffer)
        self._buffer.clear()
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def split_messages(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Complete tagged messages in ``data`` (a trailing fragment is ignored)."""
    pos = 0
    while len(data) - pos >= 5:
        length = struct.unpack_from("!I", data, pos + 1)[0]
        if pos + 1 + length > len(data):
            return
        yield data[pos : pos + 1], data[pos + 5 : pos + 1 + length]
        pos += 1 + length


def count_rows_slowly(
    client: RawClient, sql: str, chunk: int = 8192, delay: float = 0.001
) -> tuple[int, list[dict[str, str]]]:
    """Send a simple Query, then read its answer ``chunk`` bytes at a time, sleeping
    ``delay`` between reads, counting DataRows; returns (rows, error fields)."""
    client.send(query_message(sql))
    buffer = bytearray(client._buffer)
    client._buffer.clear()
    rows = 0
    errors: list[dict[str, str]] = []
    sock = client.sock
    unpack = struct.unpack_from
    pos = 0
    while True:
        data = sock.recv(chunk)
        if not data:
            raise ConnectionClosed(f"closed after {rows} rows")
        buffer += data
        end = len(buffer)
        while end - pos >= 5:
            length = unpack("!I", buffer, pos + 1)[0]
            stop = pos + 1 + length
            if stop > end:
                break
            type_byte = buffer[pos]
            if type_byte == 0x44:  # DataRow
                rows += 1
            elif type_byte == 0x45:  # ErrorResponse
                errors.append(error_fields(bytes(buffer[pos + 5 : stop])))
            elif type_byte == 0x5A:  # ReadyForQuery
                client._buffer = bytearray(buffer[stop:])
                return rows, errors
            pos = stop
        if pos > 1 << 20:
            del buffer[:pos]
            pos = 0
        if delay:
            time.sleep(delay)
