"""Real ``celery worker`` processes for integration tests: the public test kit.

The launcher is :mod:`mingle_plugins.testkit` (the same one the demo, the
benchmark and plugin authors use); this module only re-exports it.
"""

from __future__ import annotations

from mingle_plugins.testkit import (
    APP_TEMPLATE,
    MINGLE_LINE,
    STOCK_ENV,
    Cluster,
    Worker,
    client_app,
    filesystem_conf,
    write_app,
)

__all__ = [
    "APP_TEMPLATE",
    "MINGLE_LINE",
    "STOCK_ENV",
    "Cluster",
    "Worker",
    "client_app",
    "filesystem_conf",
    "write_app",
]
