"""Write docs/hooks.md from the hook specs' signatures and docstrings.

Run ``python docs/gen_hooks.py``; ``tests/unit/test_meta.py`` fails when the page is stale.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from mingle_plugins import hookspecs
from mingle_plugins.markers import PROJECT_NAME

PAGE = Path(__file__).with_name("hooks.md")

INTRO = """\
# Hook reference

Plugins implement these hooks with `@mingle_plugins.hookimpl` and publish the module (or object) in
the `celery.mingle` entry-point group (see [writing a plugin](writing-a-plugin.md)). Every hook is
called with keyword arguments; an implementation may take any subset of them.

Order: the built-in implementations (stock Celery behaviour, module `mingle_plugins.builtin`) are
registered first, so they run last. Plugins run in reverse load order (entry points are loaded
sorted by name); `tryfirst`/`trylast` move them. A plugin whose implementation raises is skipped
for that call, with one `mingle:` log line naming it; one that does not return within
`mingle_plugin_timeout` is abandoned and not called again by that worker.

The hooks are listed in the order a mingle calls them. This page is generated from
`mingle_plugins/hookspecs.py` by `python docs/gen_hooks.py`.
"""


def signature(fn: object) -> str:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {fn.__name__}({params}) -> {sig.return_annotation}: ..."  # type: ignore[attr-defined]


def render() -> str:
    parts = [INTRO]
    for name in hookspecs.__all__:
        fn = getattr(hookspecs, name)
        opts = getattr(fn, f"{PROJECT_NAME}_spec")
        doc = inspect.getdoc(fn) or ""
        parts.append(f"## `{name}`\n")
        parts.append(f"```python\n@hookimpl\n{signature(fn)}\n```\n")
        parts.append(f"`firstresult`: {'yes' if opts.get('firstresult') else 'no'}.\n")
        parts.append(doc.replace(".. versionadded:: 0.1", "*New in 0.1.*") + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    PAGE.write_text(render())
    sys.stdout.write(f"wrote {PAGE}\n")
