"""A local SQS + SNS endpoint: moto's server on a free loopback port, for one test module.

Needs ``moto[server]`` (``pip install -e 'transports/sqs[test]'``); use
:func:`tests.support.services.require_package` first, so that a machine without
it skips (and CI, with ``MINGLE_TESTS_REQUIRE_SERVICES=1``, fails).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["MotoServer"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1; :meth:`stop` ends it."""

    def __init__(self, log_path: Path, python: str = sys.executable, timeout: float = 30.0) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not start on {self.endpoint}:\n{log_path.read_text()[-2000:]}")

    def broker_url(self) -> str:
        """A kombu ``sqs://`` URL for this server (moto takes any credentials)."""
        return f"sqs://testing:testing@127.0.0.1:{self.port}"

    def client(self, service: str) -> Any:
        """A boto3 client of ``service`` ("sqs", "sns") on this server."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
