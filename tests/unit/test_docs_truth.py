"""What the operator reads is true: the generated tables render as tables, each figure has one
place, no internal jargon, the documented summary fields are the real ones, one version."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re
import sys
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner
from markdown_it import MarkdownIt

import mingle_plugins
from mingle_plugins import MingleSettings, MingleSummary, cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))
import gen_reference  # noqa: E402  (docs/gen_reference.py)

sys.path.remove(str(DOCS))


def markdown_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """Every table of a Markdown page as a GFM renderer sees it: ``(heading above it, rows)``, each
    row the cells' source text (an escaped ``\\|`` is a ``|`` of the cell, as GFM says)."""
    md = MarkdownIt("commonmark").enable("table")
    tables: list[tuple[str, list[list[str]]]] = []
    heading, rows, row, in_heading = "", None, None, False
    for token in md.parse(text):
        if token.type == "heading_open":
            in_heading = True
        elif token.type == "inline" and in_heading:
            heading, in_heading = token.content, False
        elif token.type == "table_open":
            rows = []
        elif token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(token.content)
        elif token.type == "tr_close" and rows is not None and row is not None:
            rows.append(row)
            row = None
        elif token.type == "table_close" and rows is not None:
            tables.append((heading, rows))
            rows = None
    return tables


def expected_rows(cls: type, prefix: str) -> list[list[str]]:
    return [
        [f"`{prefix}{f.name}`", f.metadata["parser"].type_name, gen_reference._default(f), f.metadata["doc"]]
        for f in dataclasses.fields(cls)
        if "parser" in f.metadata
    ]


def test_a_cell_with_an_unescaped_pipe_is_seen_as_broken() -> None:
    ((_, rows),) = markdown_tables("| a | b |\n|---|---|\n| 'x' | 'y' | 'z' |\n| 'x' \\| 'y' | z |\n")
    assert rows[1] == ["'x'", "'y'"]  # the third cell is lost: the row says something else
    assert rows[2] == ["'x' | 'y'", "z"]


def test_configuration_tables_render_the_settings_registry() -> None:
    tables: dict[str, list[list[str]]] = {}
    for heading, found in markdown_tables((DOCS / "configuration.md").read_text()):
        tables.setdefault(heading, found)  # the first table under each heading
    header = ["setting", "type", "default", "meaning"]
    core = tables["Core settings"]
    assert core[0] == header
    assert core[1:] == expected_rows(MingleSettings, "mingle_")
    assert any("|" in row[1] for row in core[1:])  # the choices: the case an unescaped `|` breaks
    shipped = gen_reference.shipped_settings()
    assert shipped, "no shipped plugin declares settings?"
    for title, _plugin, cls in shipped:
        rows = tables[title]
        assert rows[0] == header and rows[1:] == expected_rows(cls, ""), title


def test_every_table_row_has_its_header_s_cells() -> None:
    for page in [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]:
        for heading, rows in markdown_tables(page.read_text()):
            for row in rows[1:]:
                assert len(row) == len(rows[0]), (page.name, heading, row)


def test_the_readme_quotes_no_speedup_of_its_own() -> None:
    readme = (ROOT / "README.md").read_text()
    text = re.sub(r"\]\([^)]*\)", "]()", readme)  # not in link targets ("#rabbitmq-4x")
    assert not re.findall(r"\b\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?x\b", text), "figures live in performance.md"
    assert "[docs/performance.md](docs/performance.md)" in readme


def test_one_compatibility_statement() -> None:
    quickstart = (DOCS / "quickstart.md").read_text()
    assert "../README.md#compatibility" in quickstart
    assert "Tested here" not in quickstart
    readme = (ROOT / "README.md").read_text()
    assert "## Compatibility" in readme and "celery>=5.3,<5.8" in readme
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"celery>=5.3,<5.8"' in pyproject


JARGON = re.compile(
    r"issue \d+|proposed to the lead|\bthe lead\b|of mine\b|\bhelper'?s? (?:benchmark|first)",
    re.IGNORECASE,
)


@pytest.mark.parametrize("page", [*sorted(p.name for p in DOCS.glob("*.md")), "README.md", "CHANGELOG.md"])
def test_no_internal_jargon(page: str) -> None:
    path = ROOT / page if page in ("README.md", "CHANGELOG.md") else DOCS / page
    found = JARGON.findall(path.read_text())
    assert not found, f"{page}: words that mean nothing to a user: {found}"


def test_the_documented_summary_fields_are_the_real_ones() -> None:
    page = (DOCS / "testing-plugins.md").read_text()
    section = page[page.index("<!-- summary-fields -->") :]
    (_, rows), *_ = markdown_tables(section)
    documented = {row[0].strip("`"): row[1].strip("`") for row in rows[1:]}
    hints = typing.get_type_hints(MingleSummary)
    real = {f.name: f for f in dataclasses.fields(MingleSummary)}
    assert list(documented) == list(real)

    def shown(tp: Any) -> str:
        text = str(tp).replace("typing.", "").replace("mingle_plugins.model.", "")
        return re.sub(r"<class '(\w+)'>", r"\1", text).replace("Optional[str]", "str | None")

    assert {name: shown(hints[name]) for name in real} == documented


def test_cluster_accepts_a_str_folder(tmp_path: Path) -> None:
    from mingle_plugins.testkit import Cluster

    cluster = Cluster.filesystem(str(tmp_path / "c"))
    assert cluster.directory == tmp_path / "c" and (tmp_path / "c" / "proj.py").is_file()


def test_one_version_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    version = mingle_plugins.__version__
    assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 2)  # the plugin contract changed in 0.2
    assert importlib.metadata.version("celery-mingle-plugins") == version
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    app = Celery("unit", broker="memory://", set_as_current=False)
    result = CliRunner().invoke(cli.mingle, ["plugins", "--json"], obj=SimpleNamespace(app=app))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["plugins"]
    core = [r for r in rows if r.get("distribution") == "celery-mingle-plugins"]
    assert core and {r["version"] for r in core} == {version}
    assert f"celery-mingle-plugins {version}" in (ROOT / "CHANGELOG.md").read_text()
