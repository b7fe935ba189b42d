"""docs/testing-plugins.md, run as a plugin author would: its files, in a fresh virtualenv.

The virtualenv has Celery, pytest, the core, the filesystem transport plugin and the
``mingle-audit`` plugin distribution pip-installed (not this checkout on ``sys.path``);
the page's ``conftest.py`` and ``test_audit.py`` blocks are written out as they are and run
by that virtualenv's pytest. Needs no server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.compat import core_source

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from tests.support.venvs import ROOT, venv_python

DOC = ROOT / "docs" / "testing-plugins.md"
FILESYSTEM = ROOT / "transports" / "filesystem"
AUDIT = ROOT / "tests" / "fixtures" / "mingle_audit"

pytestmark = pytest.mark.slow


def doc_files(text: str) -> dict[str, str]:
    """The page's Python blocks that start with a ``# <name>.py`` line: ``{name: source}``."""
    files = {}
    for block in re.findall(r"^```python\n(.*?)^```$", text, re.M | re.S):
        first = block.splitlines()[0]
        if re.fullmatch(r"# \w+\.py", first):
            files[first[2:]] = block
    return files


def test_the_documented_test_passes_in_a_fresh_venv(tmp_path: Path) -> None:
    files = doc_files(DOC.read_text())
    assert sorted(files) == ["conftest.py", "test_audit.py", "test_audit_hook.py"]
    assert 'pytest_plugins = ["mingle_plugins.testkit.pytest_plugin"]' in files["conftest.py"]
    # Only what the light extra installs (read from pyproject.toml: the venv and the extra agree).
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = meta["project"]["optional-dependencies"]["testkit"]
    python = venv_python(
        ["celery==5.7.0", *extra], editable=[core_source(), FILESYSTEM, AUDIT], label="testkit-docs"
    )
    project = tmp_path / "project"
    project.mkdir()
    for name, source in files.items():
        (project / name).write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CELERY_MINGLE_PLUGINS")}
    args = ["-p", "no:cacheprovider", "-q", "-rA", "--durations=1", "--basetemp", str(tmp_path / "t")]
    result = subprocess.run(
        [str(python), "-m", "pytest", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout + result.stderr
    print(f"\n{out}")
    assert result.returncode == 0, out
    assert re.search(r"^PASSED test_audit.py::test_newcomer_merges_only_from_prod$", out, re.M), out
    assert re.search(r"^PASSED test_audit_hook.py::test_keeps_the_ids_of_prod_nodes_only$", out, re.M), out
    assert re.search(r"^3 passed", out.splitlines()[-1]), out
