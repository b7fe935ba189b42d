"""RabbitMQ for the queue-flag tests: vhosts of a test's own, and a record of every queue declared.

The record comes from two sources:

- the ``rabbitmq_event_exchange`` plugin (enabled by :func:`event_exchange` when it is not:
  ``rabbitmq-plugins enable rabbitmq_event_exchange``; it publishes a ``queue.created`` event,
  with the queue's ``durable``, ``auto_delete``, ``exclusive`` and ``arguments``, to the topic
  exchange ``amq.rabbitmq.event`` of the default vhost for every queue of every vhost): a
  :class:`QueueRecorder` consumes them in a thread and keeps those of its vhost, so a queue that
  lives a few milliseconds (a reply queue) is seen too;
- ``rabbitmqctl list_queues -p VHOST name durable auto_delete exclusive type arguments``, sampled
  by :meth:`QueueRecorder.sample` at the end of each phase (what lives then, with its type).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.support import services

__all__ = ["QueueRecorder", "QueueSeen", "ctl", "event_exchange", "vhost"]


def ctl(*args: str, check: bool = True) -> str:
    """``rabbitmqctl ARGS`` (skip, or fail under MINGLE_TESTS_REQUIRE_SERVICES, without it)."""
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        services.missing("rabbitmqctl is not on PATH (needed to create vhosts and list queues)")
    out = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out.stderr.strip()[:500]}")
    return out.stdout


def event_exchange() -> None:
    """Enable ``rabbitmq_event_exchange`` when it is not (it stays enabled: it only publishes
    events to ``amq.rabbitmq.event``, which nobody else here consumes)."""
    binary = shutil.which("rabbitmq-plugins")
    if binary is None:
        services.missing("rabbitmq-plugins is not on PATH (needed for the queue.created events)")
    enabled = subprocess.run([binary, "is_enabled", "rabbitmq_event_exchange"], capture_output=True)
    if enabled.returncode == 0:
        return
    out = subprocess.run([binary, "enable", "rabbitmq_event_exchange"], capture_output=True, text=True)
    if out.returncode != 0:
        services.missing(f"cannot enable rabbitmq_event_exchange: {out.stderr.strip()[:300]}")


@contextmanager
def vhost(prefix: str = "mingle-test", default_queue_type: str | None = None) -> Iterator[str]:
    """A vhost with a random name (guest has every permission), deleted after; yields its URL."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    extra = ["--default-queue-type", default_queue_type] if default_queue_type else []
    ctl("add_vhost", name, *extra)
    try:
        ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    finally:
        ctl("delete_vhost", name, check=False)


@dataclass(frozen=True)
class QueueSeen:
    name: str
    durable: bool
    auto_delete: bool
    exclusive: bool
    arguments: str
    phase: str
    how: str  # "event" or "list_queues"
    type: str = ""

    @property
    def transient_shared(self) -> bool:
        """What RabbitMQ 4.3 refuses (``transient_nonexcl_queues``)."""
        return not self.durable and not self.exclusive

    def __str__(self) -> str:
        return (
            f"{self.name} durable={self.durable} auto_delete={self.auto_delete} "
            f"exclusive={self.exclusive} type={self.type or '?'} arguments={self.arguments} "
            f"(phase {self.phase}, seen by {self.how})"
        )


def _flag(value: Any) -> bool:
    if isinstance(value, bytes):
        value = value.decode()
    return value in (True, "true", 1)


@dataclass
class QueueRecorder:
    """Every queue declared in one vhost, by ``queue.created`` events and ``list_queues`` samples."""

    vhost: str
    phase: str = "start"
    seen: list[QueueSeen] = field(default_factory=list)
    events: int = 0

    def __post_init__(self) -> None:
        import amqp

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest", virtual_host="/")
        self._thread = threading.Thread(target=self._run, name="queue-recorder", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the queue.created consumer did not start")

    def _run(self) -> None:
        conn = self._conn
        conn.connect()
        channel = conn.channel()
        queue, _, _ = channel.queue_declare("", exclusive=True, auto_delete=True)
        channel.queue_bind(queue, "amq.rabbitmq.event", "queue.created")
        channel.basic_consume(queue, callback=self._on_event, no_ack=True)
        self._ready.set()
        while not self._stop.is_set():
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
        conn.close()

    def _on_event(self, message: Any) -> None:
        headers = message.properties.get("application_headers") or {}
        vhost = headers.get("vhost")
        if isinstance(vhost, bytes):
            vhost = vhost.decode()
        if vhost != self.vhost:
            return
        name = headers.get("name")
        with self._lock:
            self.events += 1
            self.seen.append(
                QueueSeen(
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    durable=_flag(headers.get("durable")),
                    auto_delete=_flag(headers.get("auto_delete")),
                    exclusive=_flag(headers.get("exclusive")),
                    arguments=str(headers.get("arguments")),
                    phase=self.phase,
                    how="event",
                )
            )

    def sample(self) -> None:
        """The queues that live now (``rabbitmqctl list_queues``), with their type."""
        out = ctl(
            "list_queues",
            "-q",
            "-p",
            self.vhost,
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "type",
            "arguments",
        )
        with self._lock:
            for line in out.splitlines():
                parts = line.split("\t")
                if len(parts) < 6 or parts[0] == "name":
                    continue
                name, durable, auto_delete, exclusive, kind, arguments = parts[:6]
                self.seen.append(
                    QueueSeen(
                        name,
                        durable == "true",
                        auto_delete == "true",
                        exclusive == "true",
                        arguments,
                        self.phase,
                        "list_queues",
                        kind,
                    )
                )

    def next_phase(self, phase: str) -> None:
        """Sample what lives, let the events of the phase arrive, then name the next phase."""
        self.sample()
        time.sleep(0.5)  # the broker publishes its events asynchronously: those of this phase first
        self.phase = phase

    def close(self) -> None:
        self.sample()
        time.sleep(0.5)
        self._stop.set()
        self._thread.join(10)

    def queues(self) -> list[QueueSeen]:
        with self._lock:
            return list(self.seen)
