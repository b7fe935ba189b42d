"""The README's set-up commands, what CI runs, and what the packaging of each distribution says.

CI (``.ci/run``) must run the README's two set-up commands exactly as written, and the test
command must install every distribution of the repository; each distribution keeps its version
in one place (its package's ``__version__``), which the CHANGELOG names.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
REQUIREMENTS = ROOT / "requirements-test.txt"


def console_commands(markdown: str) -> list[str]:
    """The ``$ `` lines of the ``console`` blocks of a Markdown text, in order."""
    blocks = re.findall(r"^```console\n(.*?)^```", markdown, re.M | re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def setup_commands() -> dict[str, str]:
    commands = console_commands(README.read_text())
    demo = [c for c in commands if "celery mingle demo" in c]
    tests = [c for c in commands if "pytest" in c]
    assert len(demo) == 1 and len(tests) == 1, f"the README's set-up commands are not found in {commands}"
    return {"demo": demo[0], "tests": tests[0]}


def distributions() -> list[Path]:
    """Every distribution in the repository: the core and each ``transports/*``, ``plugins/*``."""
    found = [ROOT]
    for group in ("transports", "plugins"):
        found += sorted(p.parent for p in (ROOT / group).glob("*/pyproject.toml"))
    return found


def test_ci_runs_the_readme_commands_verbatim_in_fresh_venvs() -> None:
    ci_lines = [line.strip() for line in CI.read_text().splitlines()]
    positions = {}
    for name, command in setup_commands().items():
        assert command in ci_lines, f".ci/run does not run the README's {name} command: {command!r}"
        positions[name] = ci_lines.index(command)
        # each in a venv made just before it, with the pip that `python3 -m venv` brings
        before = ci_lines[: positions[name]]
        venvs = [i for i, line in enumerate(before) if line.startswith("python3 -m venv --clear ")]
        assert venvs, f"no fresh venv before the {name} command"
        since_venv = before[venvs[-1] :]
        assert not [line for line in since_venv if "pip" in line and "install" in line], since_venv
    checks = [i for i, line in enumerate(ci_lines) if line.startswith(("ruff ", "mypy"))]
    assert checks and min(checks) > max(positions.values()), "lint and types come after the README commands"
    assert "MINGLE_TESTS_REQUIRE_SERVICES=1" in CI.read_text()


def test_the_test_command_installs_every_distribution_editable() -> None:
    assert "-r requirements-test.txt" in setup_commands()["tests"]
    lines = [line.strip() for line in REQUIREMENTS.read_text().splitlines()]
    installed = {re.sub(r"\[.*\]$", "", line[3:]) for line in lines if line.startswith("-e ")}
    for dist in distributions():
        ref = "." if dist == ROOT else f"./{dist.relative_to(ROOT)}"
        assert ref in installed, f"{ref} is not in requirements-test.txt (add `-e {ref}`)"
    assert "-e .[test]" in lines


def package_of(dist: Path) -> str:
    """The package whose ``__version__`` is the distribution's version."""
    meta = tomllib.loads((dist / "pyproject.toml").read_text())
    attr: str = meta["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    return attr.rpartition(".")[0]


def package_version(dist: Path) -> tuple[str, str]:
    """``(distribution name, version)``, the version read from where pyproject says it is."""
    meta = tomllib.loads((dist / "pyproject.toml").read_text())
    project = meta["project"]
    assert "version" not in project and "version" in project.get("dynamic", []), dist
    attr = meta["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, _, name = attr.rpartition(".")
    source = (dist / module.replace(".", "/") / "__init__.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            return project["name"], node.value.value
    raise AssertionError(f"{attr} is not assigned in {dist}")


@pytest.mark.parametrize("dist", distributions(), ids=lambda d: d.name or "core")
def test_packaging_metadata(dist: Path) -> None:
    meta = tomllib.loads((dist / "pyproject.toml").read_text())
    # SPDX license expression (a table is deprecated by setuptools), and a setuptools that reads it.
    assert isinstance(meta["project"]["license"], str)
    assert (dist / "LICENSE").is_file()
    assert "setuptools>=77" in meta["build-system"]["requires"]
    name, version = package_version(dist)
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|(a|b|rc)\d+)?", version), version
    assert f"{name} {version}" in (ROOT / "CHANGELOG.md").read_text(), f"CHANGELOG.md says nothing of {name}"
