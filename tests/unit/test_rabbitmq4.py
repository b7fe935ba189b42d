"""RabbitMQ 4.x: no transient shared queue of ours, on any kombu (RabbitMQ itself: tests/integration/
test_queue_flags.py)."""

from __future__ import annotations

from copy import copy
from typing import Any

from kombu.entity import Queue
from kombu.pidbox import Mailbox

from mingle_plugins.hello.presence import presence_queue, queue_name
from mingle_plugins.wire import compat


class OldMailbox(Mailbox):  # type: ignore[misc]
    """kombu up to 5.5: the reply queue is non-durable and not exclusive."""

    def get_reply_queue(self) -> Any:
        oid = self.oid
        return Queue(  # type: ignore[no-untyped-call]
            f"{oid}.{self.reply_exchange.name}",
            exchange=self.reply_exchange,
            routing_key=oid,
            durable=False,
            auto_delete=True,
            expires=self.reply_queue_expires,
            message_ttl=self.reply_queue_ttl,
        )


def test_an_old_kombu_mailbox_gets_an_exclusive_reply_queue() -> None:
    mailbox = OldMailbox("ex", type="fanout", reply_queue_expires=10.0)
    old = mailbox.reply_queue  # computed before: recomputed
    assert not old.exclusive
    assert compat.exclusive_replies(mailbox) is mailbox
    assert type(mailbox).__name__ == "ExclusiveOldMailbox" and type(mailbox).__mro__[1] is OldMailbox
    queue = mailbox.reply_queue
    assert (queue.name, queue.exclusive, queue.durable, queue.auto_delete) == (old.name, True, False, True)
    assert (queue.routing_key, queue.exchange.name) == (old.routing_key, old.exchange.name)
    assert queue.expires == 10.0
    # Celery's broadcast works on copies (``mailbox(connection)``), each with its own oid:
    # each routes its replies to its own queue, exclusive too.
    fresh = compat.exclusive_replies(OldMailbox("ex", type="fanout"))
    bound = fresh(None)
    assert bound.reply_queue.exclusive and bound.reply_queue.routing_key == bound.oid
    assert bound.reply_queue.name == f"{bound.oid}.{bound.reply_exchange.name}"
    assert compat.exclusive_replies(copy(mailbox)).__class__ is type(mailbox)  # once is enough
    assert type(compat.exclusive_replies(OldMailbox("other"))) is type(mailbox)  # one subclass
    assert not OldMailbox("ex").reply_queue.exclusive  # no kombu class changed


def test_a_new_kombu_mailbox_is_left_alone() -> None:
    mailbox = Mailbox("ex", type="fanout")
    if mailbox.reply_queue.exclusive:  # kombu 5.6+
        assert type(compat.exclusive_replies(mailbox)) is Mailbox


def test_the_presence_queue_is_durable_classic_and_expires() -> None:
    queue = presence_queue("ex.mingle.presence.v2")
    assert (queue.durable, queue.auto_delete, queue.exclusive) == (True, True, False)
    assert queue.queue_arguments == {"x-queue-type": "classic"} and queue.expires == 60.0
    assert presence_queue("q", no_declare=True).no_declare is True


def test_the_presence_queue_has_a_name_of_its_own(consumer: Any) -> None:
    # 0.1 declared "<exchange>.mingle.presence" non-durable: redeclared durable, 406.
    consumer.app.conf.control_exchange = "prod"
    assert queue_name(consumer.app) == "prod.mingle.presence.v2"
