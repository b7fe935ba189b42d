"""What the benchmark scripts share: the progress log, the options they have in common, a
Redis database or RabbitMQ virtual host of a run's own (the servers of this machine are
shared), and which code was measured.

Imported from the directory of the scripts (``python benchmarks/<script>.py`` puts it first on
``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REDIS_HOST = "redis://127.0.0.1:6379"
AMQP_HOST = "amqp://guest:guest@127.0.0.1:5672"
BROKERS: tuple[str, ...] = ("redis", "rabbitmq")


def log(msg: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# -- options ------------------------------------------------------------------


def ints(text: str | int) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``."""
    return [int(x) for x in str(text).split(",") if x.strip()]


def names(text: str) -> list[str]:
    """``"redis, rabbitmq"`` -> ``["redis", "rabbitmq"]``."""
    return [x.strip() for x in text.split(",") if x.strip()]


def add_common_options(
    p: argparse.ArgumentParser,
    *,
    brokers: str,
    variants: Sequence[str],
    repeat: int,
    repeat_help: str,
    json_help: str = "also write every measurement to this JSON file",
) -> None:
    """``--brokers``, ``--variants``, ``--repeat``, ``--json`` and ``--python``."""
    p.add_argument("--brokers", default=brokers, help="comma-separated: " + ", ".join(BROKERS))
    p.add_argument("--variants", default=",".join(variants), help="comma-separated: " + ", ".join(variants))
    p.add_argument("--repeat", type=int, default=repeat, help=repeat_help)
    p.add_argument("--json", type=Path, help=json_help)
    p.add_argument("--python", default=sys.executable, help="the Python that runs the workers")


def check_common_options(
    p: argparse.ArgumentParser, args: argparse.Namespace, variants: Sequence[str]
) -> None:
    """Split ``--brokers`` and ``--variants`` into lists and check them and ``--repeat``."""
    args.brokers = names(args.brokers) if isinstance(args.brokers, str) else list(args.brokers)
    args.variants = names(args.variants) if isinstance(args.variants, str) else list(args.variants)
    for b in args.brokers:
        if b not in BROKERS:
            p.error(f"unknown broker {b!r}")
    for v in args.variants:
        if v not in variants:
            p.error(f"unknown variant {v!r}")
    if not args.brokers or not args.variants:
        p.error("--brokers and --variants need one name at least")
    if args.repeat < 1:
        p.error("--repeat >= 1")


# -- a database / virtual host of the run's own ----------------------------------


def _redis_claim() -> Any:
    """``tests/support/redis_claim.py``, the claims the tests make too (no pytest in it)."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.support import redis_claim

    return redis_claim


def claim_redis(databases: range, avoid: set[int] | None = None) -> tuple[int, Any, str] | None:
    """``(db, client, token)``: a Redis database of ``databases`` claimed for this run (waited
    for while every one is taken), not one of ``avoid``; ``None`` if none came free."""
    host, port = REDIS_HOST.rsplit("//", 1)[1].split(":")
    return _redis_claim().claim(host, int(port), [d for d in databases if d not in (avoid or set())])


class RedisSpace:
    """A Redis database of the run's own, claimed as the tests claim theirs
    (``tests/support/redis_claim.py``: a random empty one of 1-15, ``SET NX`` of a claim key,
    waited for when all are taken), and not in ``taken``. :meth:`close` deletes the keys whose
    name holds ``tag`` (give every name of the run the tag: its ``control_exchange`` and
    ``task_default_queue``), then releases the database (``FLUSHDB`` while the claim is the run's)."""

    def __init__(self, tag: str, taken: set[int] | None = None) -> None:
        taken = set() if taken is None else taken
        self.tag = tag
        claimed = claim_redis(range(1, 16), avoid=taken)
        if claimed is None:
            raise RuntimeError(
                "no Redis database among 1-15 came free (the server is shared: none is taken over)"
            )
        self.db, self._client, self._token = claimed
        taken.add(self.db)
        self.url = f"{REDIS_HOST}/{self.db}"

    def describe(self) -> str:
        return f"Redis db {self.db}"

    def close(self) -> int:
        """Delete the run's keys; how many."""
        import redis

        deleted = 0
        with contextlib.closing(redis.Redis.from_url(self.url)) as r:
            for key in list(r.scan_iter(match=f"*{self.tag}*", count=1000)):
                deleted += int(r.delete(key))
            # kombu 5.7 keeps the deadlines of every binding in one sorted set of the database
            for member in list(r.zscan_iter("_kombu.binding_deadlines", match=f"*{self.tag}*")):
                r.zrem("_kombu.binding_deadlines", member[0])
            # The workers' event exchange (celeryev, untagged: Gossip binds every worker to it) is
            # the database's own too; left behind, the database is not empty for the next run.
            deleted += int(r.delete("_kombu.binding.celeryev"))
            r.zrem("_kombu.binding_deadlines", "celeryev")
        _redis_claim().release(self._client, self._token)  # FLUSHDB while the claim is the run's
        return deleted


class RabbitSpace:
    """A RabbitMQ virtual host of the run's own (``rabbitmqctl add_vhost``), deleted by :meth:`close`."""

    def __init__(self, tag: str, taken: set[int] | None = None) -> None:
        self.vhost = tag
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.vhost], check=True, capture_output=True)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        self.url = f"{AMQP_HOST}/{self.vhost}"

    def describe(self) -> str:
        return f"RabbitMQ vhost {self.vhost}"

    def close(self) -> int:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], capture_output=True)
        return 0


def open_space(broker: str, tag: str, taken: set[int] | None = None) -> RedisSpace | RabbitSpace:
    """The run's own database (``redis``) or virtual host (``rabbitmq``)."""
    if broker == "redis":
        return RedisSpace(tag, taken)
    if broker == "rabbitmq":
        return RabbitSpace(tag, taken)
    raise ValueError(f"unknown broker {broker!r}")


# -- the code, as installed --------------------------------------------------------


def compile_checkout() -> str:
    """Write the ``.pyc`` files of this checkout's packages (``compileall``), as ``pip install``
    of a wheel does for every package it installs: Celery and kombu in the virtualenv have
    theirs, and an editable checkout run under ``PYTHONDONTWRITEBYTECODE=1`` (as on this machine)
    would otherwise compile this package from source at every worker start (~40-60 ms of CPU
    measured, which a user's installed worker never pays). Returns a line that says what it did."""
    root = Path(__file__).resolve().parent.parent
    folders = [
        root / "mingle_plugins",
        *sorted(root.glob("transports/*/mingle_*")),
        *sorted(root.glob("plugins/*/mingle_*")),
    ]
    folders = [f for f in folders if f.is_dir()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", *map(str, folders)], check=True, env=env)
    return f"compiled the .pyc files of {len(folders)} packages of the checkout (as pip install does)"


def clean_pythons() -> tuple[str, str]:
    """``(stock, ours)``: the Pythons of two virtualenvs with only what a user installs:
    ``celery[redis]`` with Celery, kombu and redis-py at the versions of this Python's; ``ours``
    also this checkout's core, installed from it as ``pip install .`` does (not editable; its
    ``.pyc`` written). No flower, no test tools, no editable finders, no other distribution of
    the repository: each of those costs every ``celery`` start (flower's ``celery.commands``
    entry point alone imports ~0.3 s of tornado), stock's workers included. Built once per
    version of the core in the tests' virtualenv cache (``tests/support/venvs.py``), outside the
    checkout."""
    import celery
    import kombu
    import redis

    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.support.venvs import venv_python

    # As a user installs it: ``celery[redis]`` (kombu's redis extra brings redis-py and packaging).
    base = [
        f"celery[redis]=={celery.__version__}",
        f"kombu=={kombu.__version__}",
        f"redis=={redis.__version__}",
    ]
    stock = venv_python(base, label="bench-stock")
    ours = venv_python(base, editable=[root], label="bench-ours")
    return str(stock), str(ours)


# -- what ran -------------------------------------------------------------------


def code_state() -> str:
    """Which ``mingle_plugins`` the workers ran: its git commit, and uncommitted changes."""
    import mingle_plugins

    where = Path(mingle_plugins.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return f"mingle_plugins from {where}"
    changed = [name for name in dirty if name.endswith(".py")]
    return f"mingle_plugins from {where} at {head or '?'}" + (
        f" + uncommitted changes in {', '.join(changed)}" if changed else ""
    )
