"""An AMQP 0-9-1 proxy in front of the local RabbitMQ that applies RabbitMQ 4.3's rule.

RabbitMQ 4.3 denies the deprecated feature ``transient_nonexcl_queues`` by default: a
``queue.declare`` (not passive) of a queue that is neither durable nor exclusive is answered
with ``connection.close(541 INTERNAL_ERROR)``. RabbitMQ 3.10 (this machine's) accepts it, so
:class:`Rabbit43Proxy` sits between the clients and the broker, reads every frame the client
sends, and answers such a declare itself with that ``connection.close``, then drops both sides
(what the broker does). ``refuse`` (a predicate on ``(queue name, flags)``) adds refusals of
its own, for a test of what a refusal costs. Every other frame passes unchanged, both ways.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Declare", "Rabbit43Proxy"]

FRAME_METHOD = 1
FRAME_END = b"\xce"
QUEUE_DECLARE = (50, 10)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)


@dataclass(frozen=True)
class Declare:
    """One ``queue.declare`` a client sent through the proxy."""

    queue: str
    passive: bool
    durable: bool
    exclusive: bool
    auto_delete: bool

    @property
    def transient_shared(self) -> bool:
        return not self.passive and not self.durable and not self.exclusive


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> bytes:
    header = _read_exact(sock, 7)
    size = struct.unpack(">I", header[3:7])[0]
    return header + _read_exact(sock, size + 1)


def _parse_declare(payload: bytes) -> Declare:
    # class-id, method-id, reserved-1 (short), queue (shortstr), bits, arguments (table)
    pos = 6
    length = payload[pos]
    queue = payload[pos + 1 : pos + 1 + length].decode(errors="replace")
    bits = payload[pos + 1 + length]
    return Declare(queue, bool(bits & 1), bool(bits & 2), bool(bits & 4), bool(bits & 8))


def _close_frame(code: int, text: str, class_method: tuple[int, int]) -> bytes:
    raw = text.encode()[:255]
    payload = struct.pack(">HHH", *CONNECTION_CLOSE, code) + bytes([len(raw)]) + raw
    payload += struct.pack(">HH", *class_method)
    return struct.pack(">BHI", FRAME_METHOD, 0, len(payload)) + payload + FRAME_END


@dataclass
class Rabbit43Proxy:
    """``with Rabbit43Proxy() as proxy: url = proxy.url(vhost)``; :attr:`declares` and
    :attr:`refused` record what went through."""

    upstream: tuple[str, int] = ("127.0.0.1", 5672)
    refuse: Callable[[Declare], bool] | None = None
    declares: list[Declare] = field(default_factory=list)
    refused: list[Declare] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="amqp-proxy", daemon=True).start()

    def url(self, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def __enter__(self) -> Rabbit43Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            write_lock = threading.Lock()
            threading.Thread(target=self._upstream, args=(client, server, write_lock), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, write_lock), daemon=True).start()

    def _downstream(self, server: socket.socket, client: socket.socket, write_lock: threading.Lock) -> None:
        try:
            while True:
                frame = _read_frame(server)  # whole frames: a refusal is never written mid-frame
                with write_lock:
                    client.sendall(frame)
        except OSError:
            pass
        finally:
            _shut(client)
            _shut(server)

    def _upstream(self, client: socket.socket, server: socket.socket, write_lock: threading.Lock) -> None:
        try:
            server.sendall(_read_exact(client, 8))  # the protocol header
            while True:
                frame = _read_frame(client)
                if frame[0] == FRAME_METHOD and struct.unpack(">HH", frame[7:11]) == QUEUE_DECLARE:
                    declare = _parse_declare(frame[7:-1])
                    with self._lock:
                        self.declares.append(declare)
                    if declare.transient_shared or (self.refuse is not None and self.refuse(declare)):
                        with self._lock:
                            self.refused.append(declare)
                        self._refuse(client, server, write_lock, declare)
                        return
                server.sendall(frame)
        except OSError:
            pass
        finally:
            _shut(server)

    def _refuse(
        self, client: socket.socket, server: socket.socket, write_lock: threading.Lock, declare: Declare
    ) -> None:
        """What RabbitMQ 4.3 does: ``connection.close(541)``, then the connection is gone."""
        _shut(server)  # nothing more reaches the broker: it drops the connection (and its queues)
        text = (
            f"INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated. By default, this feature "
            f"is not permitted anymore (queue '{declare.queue}')"
        )
        with write_lock:
            client.sendall(_close_frame(541, text, QUEUE_DECLARE))
        client.settimeout(2)
        try:  # the client answers close-ok; then the broker closes the socket
            while True:
                frame = _read_frame(client)
                if frame[0] == FRAME_METHOD and struct.unpack(">HH", frame[7:11]) == CONNECTION_CLOSE_OK:
                    break
        except OSError:
            pass
        _shut(client)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
