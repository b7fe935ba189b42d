"""Release-ready packaging: every distribution of the repository built as a user would release it.

``python -m build`` makes the sdist and the wheel (the wheel from the sdist, so a file missing
from the sdist breaks the build), ``twine check --strict`` passes, setuptools prints no
deprecation, and a fresh virtualenv that installs the built wheels alone, run outside the
checkout, imports the packages from its own site-packages and runs ``celery mingle demo``.

The build runs without isolation, with the setuptools of the test extra: that saves half a
minute, and ``build-system.requires`` is checked by tests/unit/test_setup_commands.py and used
by every ``pip install`` of a checkout (the README's demo command in CI, for one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.support.venvs import checkout_lock
from tests.unit.test_setup_commands import distributions, package_of, package_version

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{cmd} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr}"
    )
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``(dist folder, build output)``: every distribution built once for this module."""
    dist = tmp_path_factory.mktemp("dist")
    output = ""
    with checkout_lock():
        for source in distributions():
            output += run(
                [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
                cwd=source,
            )
    return dist, output


def expected_files() -> dict[str, tuple[str, str, str]]:
    """``{distribution: (file name stem, version, package)}``."""
    found = {}
    for source in distributions():
        name, version = package_version(source)
        found[name] = (name.replace("-", "_"), version, package_of(source))
    return found


def test_build_makes_a_wheel_and_an_sdist_of_every_distribution(built: tuple[Path, str]) -> None:
    dist, output = built
    assert "deprecat" not in output.lower(), output  # e.g. setuptools' `project.license` table box
    for name, (stem, version, package) in expected_files().items():
        wheel = dist / f"{stem}-{version}-py3-none-any.whl"
        sdist = dist / f"{stem}-{version}.tar.gz"
        assert wheel.is_file() and sdist.is_file(), f"{name}: {sorted(p.name for p in dist.iterdir())}"
        with zipfile.ZipFile(wheel) as whl:
            names = whl.namelist()
            metadata = whl.read(f"{stem}-{version}.dist-info/METADATA").decode()
        assert f"{package}/py.typed" in names
        assert f"{stem}-{version}.dist-info/licenses/LICENSE" in names
        assert "License-Expression: BSD-3-Clause" in metadata
        assert f"Version: {version}" in metadata
        with tarfile.open(sdist) as tar:
            members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
        assert {"LICENSE", "README.md", "pyproject.toml", f"{package}/__init__.py"} <= members
    out = run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir()))], cwd=dist
    )
    assert out.count("PASSED") == 2 * len(expected_files()), out


def test_a_fresh_venv_runs_the_demo_from_the_built_wheels(built: tuple[Path, str], tmp_path: Path) -> None:
    dist, _ = built
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", *map(str, sorted(dist.glob("*.whl")))], cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CELERY_MINGLE_PLUGINS")}
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")
    for name, (_stem, version, package) in expected_files().items():
        where = run(
            [
                str(python),
                "-c",
                f"import {package}, importlib.metadata as m; "
                f"print({package}.__file__, {package}.__version__, m.version({name!r}))",
            ],
            cwd=tmp_path,
            env=env,
        ).split()
        assert Path(where[0]).is_relative_to(venv), f"{package} imported from {where[0]}, not the venv"
        assert where[1:] == [version, version]
    out = run([str(venv / "bin" / "celery"), "mingle", "demo"], cwd=tmp_path, env=env, timeout=120)
    assert "OK: the newcomer learnt the 5 revoked ids and the clock" in out, out
