"""Which services this machine has, and what a test does when one is missing.

A test that needs a broker or database skips with the reason on a machine
without it, unless ``MINGLE_TESTS_REQUIRE_SERVICES=1`` (set by ``.ci/run``),
which turns every such skip into a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from collections.abc import Iterator

import pytest

from .redis_claim import CLAIM_KEY as CLAIM_KEY  # re-exported: the tests of the claims read it
from .redis_claim import claim, release

REQUIRE_ENV = "MINGLE_TESTS_REQUIRE_SERVICES"

#: Each service's host, port and base URL. The Redis URL names no database: a test takes one of
#: its own with :func:`redis_db` (never a fixed number: the server is shared with other programs).
SERVICES: dict[str, tuple[str, int, str]] = {
    "redis": ("127.0.0.1", 6379, "redis://127.0.0.1:6379"),
    "rabbitmq": ("127.0.0.1", 5672, "amqp://guest:guest@127.0.0.1:5672//"),
    "postgres": ("127.0.0.1", 5432, "postgresql://postgres@127.0.0.1:5432/postgres"),
}


#: Services that are a Python package the tests start themselves: name -> (module, how to get it).
PACKAGES: dict[str, tuple[str, str]] = {
    "moto": ("moto.server", "pip install -e 'transports/sqs[test]' (moto[server], a local SQS + SNS)"),
}


def services_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def missing(reason: str) -> None:
    """Skip the test, or fail it when services are required."""
    if services_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def require(service: str) -> str:
    """Return the service's URL, or skip/fail when it does not answer."""
    host, port, url = SERVICES[service]
    if not reachable(host, port):
        missing(f"{service} is not available on {host}:{port}")
    return url


def require_package(service: str) -> str:
    """Return the module that runs the service, or skip/fail when it is not installed."""
    module, install = PACKAGES[service]
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package is missing
        found = False
    if not found:
        missing(f"{service} is not installed: {install}")
    return module


@contextlib.contextmanager
def redis_db(databases: range = range(1, 16), wait: float | None = None) -> Iterator[str]:
    """A Redis database of this test's own, as a broker URL: a random one of ``databases`` that is
    empty (``DBSIZE`` 0), claimed with a lock key (``SET NX``); at the end ``FLUSHDB`` of that
    database only, if the claim is still this test's. Database 0 is left to other programs.

    When every database is taken (other runs on a shared server), waits for one to come free
    (``MINGLE_REDIS_WAIT`` seconds, 180 by default: :mod:`tests.support.redis_claim`); skips (or
    fails under ``MINGLE_TESTS_REQUIRE_SERVICES``) when Redis is not there or none came free.
    """
    host, port, base = SERVICES["redis"]
    if not reachable(host, port):
        missing(f"redis is not available on {host}:{port}")
    claimed = claim(host, port, databases) if wait is None else claim(host, port, databases, wait)
    if claimed is None:
        missing(
            f"no Redis database in {databases.start}..{databases.stop - 1} on {host}:{port} came free "
            "(each holds keys: other runs use them)"
        )
        return
    db, client, token = claimed
    try:
        yield f"{base}/{db}"
    finally:
        release(client, token)
