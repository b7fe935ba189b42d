"""Write the generated parts of the docs: docs/hooks.md, and the settings tables of
docs/configuration.md, from the hook specs and the settings declarations.

Run ``python docs/gen_reference.py``; ``tests/unit/test_meta.py`` fails when either is stale.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from mingle_plugins import hookspecs
from mingle_plugins.markers import PROJECT_NAME
from mingle_plugins.settings import MingleSettings, SettingsRegistry

DOCS = Path(__file__).resolve().parent
HOOKS_PAGE = DOCS / "hooks.md"
CONFIG_PAGE = DOCS / "configuration.md"

#: The plugin distributions of this repository whose settings are documented: (module, title).
SHIPPED_PLUGINS = [
    ("mingle_filesystem", "celery-mingle-filesystem (`transports/filesystem`)"),
    ("mingle_pgmq", "celery-mingle-pgmq (`transports/pgmq`)"),
    ("mingle_sqs", "celery-mingle-sqs (`transports/sqs`)"),
    ("mingle_store", "celery-mingle-store (`plugins/revocation-store`)"),
]

BEGIN, END = "<!-- generated settings: begin -->", "<!-- generated settings: end -->"

INTRO = """\
# Hook reference

Plugins implement these hooks with `@mingle_plugins.hookimpl` and publish the module (or object) in
the `celery.mingle` entry-point group (see [writing a plugin](writing-a-plugin.md)). Every hook is
called with keyword arguments; an implementation may take any subset of them.

Order: the built-in implementations (stock Celery behaviour, module `mingle_plugins.plugins.builtin`) are
registered first, so they run last. Plugins run in reverse load order (entry points are loaded
sorted by name); `tryfirst`/`trylast` move them. Each implementation is called on its own, through
one call loop: one that raises, or returns a value of the wrong kind, is skipped for that call
(logged once at ERROR, then counted: `summary.plugin_faults`, `celery mingle status`, a problem
of `celery mingle check`), and the others still run exactly once; one that does not return
within `mingle_plugin_timeout` is abandoned for that call, skipped *in that hook only* while the
call is still running, and called again once it returned. In a check hook (`mingle_on_reply`) a
fault rejects the reply; a merge policy marked `@mingle_plugins.fail_closed` keeps none of the
node's ids when it fails; any other fault fails open. Hook wrappers are not supported.

Every hook that looks at a neighbour's reply gets the same typed value, a `Reply`
(`mingle_plugins.Reply`: `nodename`, `clock`, `ids`, `stamps`, `source`, `extension`, `extra`), on
every path: per-reply merge, bulk merge and the answering side (`source == "request"`). A reply
reaches the hooks only after its verdict: one per neighbour (the first body under its name that
passes the checks, trust, the signature and `mingle_on_reply`), reached before anything is
counted, fetched or merged; in the fast profile `mingle_merge_revoked` sees the node's verified
full list (or the list of a kept node with the same digest), never a digest alone. Invalid ids
were already dropped (`Reply.invalid_ids`). What each path guarantees: docs/security.md.

The hooks are listed in the order a worker calls them. This page is generated from
`mingle_plugins/hookspecs.py` by `python docs/gen_reference.py`.
"""


def signature(fn: Any) -> str:
    """The exact signature of a hook, as an implementation would write it."""
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {fn.__name__}({params}) -> {sig.return_annotation}: ..."


def _markdown(doc: str) -> str:
    """A docstring's directives as Markdown: versionadded / versionchanged."""
    out: list[str] = []
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        match = re.match(r"\.\. version(added|changed):: (\S+)", line.strip())
        if match:
            kind, version = match.groups()
            text = []
            while i + 1 < len(lines) and lines[i + 1].startswith("   "):
                i += 1
                text.append(lines[i].strip())
            label = "New" if kind == "added" else "Changed"
            out.append(f"*{label} in {version}.*" + (f" {' '.join(text)}" if text else ""))
            out.append("")
        else:
            out.append(line)
        i += 1
    return "\n".join(out).strip() + "\n"


def render_hooks() -> str:
    parts = [INTRO]
    for name in hookspecs.__all__:
        fn = getattr(hookspecs, name)
        opts = getattr(fn, f"{PROJECT_NAME}_spec")
        parts.append(f"## `{name}`\n")
        parts.append(f"```python\n@hookimpl\n{signature(fn)}\n```\n")
        parts.append(f"`firstresult`: {'yes' if opts.get('firstresult') else 'no'}.\n")
        parts.append(_markdown(inspect.getdoc(fn) or ""))
    return "\n".join(parts)


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "-"
    if value == 2**53:
        return "`2**53`"
    return f"`{value!r}`"


def settings_table(cls: type, prefix: str) -> str:
    rows = ["| setting | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        parser = f.metadata.get("parser")
        if parser is None:
            continue
        cells = [f"`{prefix}{f.name}`", parser.type_name, _default(f), f.metadata["doc"]]
        # A `|` in a cell (`'stock' | 'fast'`) ends it unless escaped, in code spans too (GFM).
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def shipped_settings() -> list[tuple[str, str, type]]:
    """``(title, plugin name, settings class)`` of each shipped plugin that declares settings."""
    found = []
    for module_name, title in SHIPPED_PLUGINS:
        module = importlib.import_module(module_name)
        registry = SettingsRegistry()
        module.mingle_add_settings(registry=registry)
        for plugin, cls in registry.declared.items():
            found.append((title, plugin, cls))
    return found


def render_settings() -> str:
    parts = [BEGIN, "", "### Core settings", "", settings_table(MingleSettings, "mingle_"), ""]
    for title, plugin, cls in shipped_settings():
        parts += [
            f"### {title}",
            "",
            f'In `mingle_plugin_settings = {{"{plugin}": {{...}}}}`:',
            "",
            settings_table(cls, ""),
            "",
        ]
    parts.append(END)
    return "\n".join(parts)


def render_configuration(page: str) -> str:
    start, end = page.index(BEGIN), page.index(END) + len(END)
    return page[:start] + render_settings() + page[end:]


if __name__ == "__main__":
    HOOKS_PAGE.write_text(render_hooks())
    CONFIG_PAGE.write_text(render_configuration(CONFIG_PAGE.read_text()))
    sys.stdout.write(f"wrote {HOOKS_PAGE} and the settings tables of {CONFIG_PAGE}\n")
