"""The store is a plugin like any other: it imports only what ``mingle_plugins`` exports."""

from __future__ import annotations

import ast
from pathlib import Path

import mingle_plugins

PACKAGE = Path(__file__).resolve().parents[1] / "mingle_store"


def test_the_store_imports_only_public_names_of_mingle_plugins() -> None:
    used: set[str] = set()
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mingle_plugins"):
                assert node.module == "mingle_plugins", f"{path.name} imports {node.module}"
                used |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("mingle_plugins"), f"{path.name} imports {alias.name}"
    assert used and used <= set(mingle_plugins.__all__), used - set(mingle_plugins.__all__)
