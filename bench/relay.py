"""The fan-out floor: a relay that runs every statement on both servers and does nothing else.

Logs each client in to both servers (start-up and SCRAM here, with Twinkly's own codec and
authenticator), then hands the three sockets to ``relay.c``'s loop, which copies bytes and
nothing more. Its throughput is the most any fan-out proxy could reach on this machine with
this load; its CPU per transaction is the syscalls' and the kernel's share of a proxy's.

Usage: ``python bench/relay.py --listen PORT --truth HOST:PORT --target HOST:PORT
--user U --password P`` (run by ``bench/run.py`` as its "relay" target).
"""

from __future__ import annotations

import argparse
import ctypes
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twinkly.proxy.auth import BackendAuthenticator  # noqa: E402
from twinkly.wire.backend import AUTH_OK, Authentication, ErrorResponse, decode_backend  # noqa: E402
from twinkly.wire.framing import MessageFramer, StartupFramer  # noqa: E402
from twinkly.wire.frontend import SSLRequest, StartupMessage, decode_startup  # noqa: E402

SOURCE = Path(__file__).with_name("relay.c")
AUTH_OK_MESSAGE = b"R" + struct.pack("!Ii", 8, AUTH_OK)


def build(directory: Path) -> ctypes.CDLL:
    """Compile relay.c (gcc is on every machine this project runs on) and load it."""
    library = directory / "relay.so"
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-o", str(library), str(SOURCE)]
    subprocess.run(cmd, check=True, capture_output=True)
    lib = ctypes.CDLL(str(library))
    lib.relay_add.argtypes = [ctypes.c_int] * 4
    lib.relay_serve.argtypes = [ctypes.c_int]
    return lib


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def read_startup(client: socket.socket) -> StartupMessage:
    """The client's StartupMessage, after refusing TLS if it asks (the relay speaks plain TCP)."""
    framer, data = StartupFramer(), b""
    while True:
        body, data = framer.feed(data)
        if body is None:
            data = client.recv(65536)
            if not data:
                raise ConnectionError("client left during start-up")
            continue
        packet = decode_startup(body)
        if isinstance(packet, StartupMessage):
            return packet
        if not isinstance(packet, SSLRequest):
            raise ConnectionError(f"unexpected start-up packet {packet!r}")
        client.sendall(b"N")


def login(
    server: tuple[str, int], parameters: dict[str, str], user: str, password: str
) -> tuple[socket.socket, bytes]:
    """A connection logged in to ``server``, and every message it sent after
    AuthenticationOk up to and including ReadyForQuery, as raw bytes."""
    sock = socket.create_connection(server)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(StartupMessage({**parameters, "user": user}).encode())
    authenticator = BackendAuthenticator(user, password, f"{server[0]}:{server[1]}")
    framer, after_ok, authenticated = MessageFramer(), [], False
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"{server} closed the connection during login")
        for type_byte, payload in framer.feed(data):
            message = decode_backend(type_byte, payload)
            if isinstance(message, ErrorResponse):
                raise ConnectionError(f"{server} refused the login: {message}")
            if isinstance(message, Authentication):
                sock.sendall(authenticator.respond(message))
                authenticated = message.code == AUTH_OK
                continue
            if authenticated:
                after_ok.append(bytes([type_byte]) + struct.pack("!I", len(payload) + 4) + payload)
            if type_byte == ord("Z"):
                return sock, b"".join(after_ok)


def serve_client(
    client: socket.socket, args: argparse.Namespace, lib: ctypes.CDLL, epfd: int
) -> None:
    """Log ``client`` in to both servers, then give its three sockets to the C loop."""
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    parameters = dict(read_startup(client).parameters)
    parameters["database"] = args.database
    truth, greeting = login(address(args.truth), parameters, args.user, args.password)
    target, _ = login(address(args.target), parameters, args.user, args.password)
    client.sendall(AUTH_OK_MESSAGE + greeting)
    socks = (client, truth, target)
    if lib.relay_add(epfd, *(s.fileno() for s in socks)) != 0:
        raise OSError("relay_add failed")
    for sock in socks:
        sock.detach()  # the C loop owns and closes them now


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    p.add_argument("--truth", required=True, help="HOST:PORT, answer sent")
    p.add_argument("--target", required=True, help="HOST:PORT, answer dropped")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--database", default="app")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="twinkly-relay-") as build_dir:
        lib = build(Path(build_dir))
    epoll = select.epoll()
    loop = threading.Thread(target=lib.relay_serve, args=(epoll.fileno(),), daemon=True)
    loop.start()  # ctypes lets go of the GIL for the call: the loop runs beside accept()
    signal.signal(signal.SIGTERM, lambda *_: (lib.relay_stop(), sys.exit(0)))
    listener = socket.create_server(("127.0.0.1", args.listen), backlog=128)
    print(f"relay listening on 127.0.0.1:{args.listen}", flush=True)
    while True:
        client, _ = listener.accept()
        try:
            serve_client(client, args, lib, epoll.fileno())
        except (OSError, ConnectionError) as e:
            print(f"relay: connection dropped: {e}", file=sys.stderr, flush=True)
            client.close()


if __name__ == "__main__":
    sys.exit(main())
