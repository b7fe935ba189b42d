"""Which services this machine has, and what a test does when one is missing.

A test that needs a broker or database skips with the reason on a machine
without it, unless ``MINGLE_TESTS_REQUIRE_SERVICES=1`` (set by ``.ci/run``),
which turns every such skip into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import socket

import pytest

REQUIRE_ENV = "MINGLE_TESTS_REQUIRE_SERVICES"

SERVICES: dict[str, tuple[str, int, str]] = {
    "redis": ("127.0.0.1", 6379, "redis://127.0.0.1:6379/0"),
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
