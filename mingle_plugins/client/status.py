"""What the live workers' last mingle did (``mingle_status``), for ``celery mingle status`` and the demo.

Outside :mod:`mingle_plugins.cli` so that the demo (which the CLI runs) needs
no CLI module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from ..answering.control import STATUS_COMMAND
from ..plugins.loader import SLOW_IMPORT_SECONDS
from ..wire import compat

__all__ = [
    "fault_lines",
    "plugin_problems",
    "print_status",
    "query_status",
    "same_name_lines",
    "status_rows",
    "table",
]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, no trailing blanks."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _merge_replies(replies: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for reply in replies or ():
        if isinstance(reply, Mapping):
            out.update(reply)
    return out


def query_status(app: Any, timeout: float = 1.0, destination: Sequence[str] | None = None) -> dict[str, Any]:
    """Ask the live workers about their last mingle, then ``ping`` for the stock ones.

    :return: ``{"workers": {node: mingle_status reply}, "stock": {node: why}}``.
    """
    kwargs: dict[str, Any] = {"reply": True, "timeout": timeout}
    if destination:
        kwargs["destination"] = list(destination)
    compat.exclusive_replies(app.control.mailbox)  # kombu < 5.6: see there (RabbitMQ 4.3)
    answers = _merge_replies(app.control.broadcast(STATUS_COMMAND, **kwargs))
    workers: dict[str, Any] = {}
    stock: dict[str, str] = {}
    for node, reply in sorted(answers.items()):
        if isinstance(reply, Mapping) and "error" not in reply and "last" in reply:
            workers[node] = dict(reply)
        else:
            error = reply.get("error") if isinstance(reply, Mapping) else reply
            stock[node] = f"no mingle_status ({error})"
    pinged = _merge_replies(app.control.ping(timeout=timeout, destination=kwargs.get("destination")))
    for node in sorted(pinged):
        if node not in workers and node not in stock:
            stock[node] = "no mingle_status (did not answer it)"
    return {"workers": workers, "stock": stock}


def fault_lines(workers: Mapping[str, Any]) -> list[str]:
    """One line per runtime plugin fault a live worker reports (raised, hung, wrong return)."""
    lines = []
    for node, reply in workers.items():
        for f in reply.get("faults") or ():
            if isinstance(f, Mapping):
                lines.append(
                    f"{node}: plugin {f.get('plugin')!r} {f.get('kind')} in {f.get('hook')} "
                    f"({f.get('count')} time(s)), last: {f.get('last')}"
                )
    return lines


def plugin_problems(workers: Mapping[str, Any]) -> list[str]:
    """One line per ``problem`` a plugin reports of its own state (``mingle_plugin_status``)."""
    return [
        f"{node}: plugin {plugin!r}: {fields['problem']}"
        for node, reply in workers.items()
        for plugin, fields in (reply.get("plugin_status") or {}).items()
        if isinstance(fields, Mapping) and fields.get("problem")
    ]


def same_name_lines(workers: Mapping[str, Any]) -> list[str]:
    """One line per live worker that heard another one under its own node name."""
    from ..answering.step import SameName

    lines = []
    for node, reply in workers.items():
        same = reply.get("same_name")
        if isinstance(same, Mapping) and same.get("count"):
            lines.append(
                f"{node}: another live worker runs under this node name (it {same.get('last')}): "
                + SameName.MEANING % node
            )
    return lines


def status_rows(workers: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for node, reply in workers.items():
        last = reply.get("last") or {}
        loaded = [p["name"] for p in reply.get("plugins", []) if p.get("status") == "loaded"]
        if not reply.get("enabled"):
            state = "off"
        elif not last:
            state = "pending"
        else:
            state = "skipped" if last.get("skipped") else "on"
        rows.append(
            (
                node,
                state,
                str(reply.get("transport") or "-"),
                str(len(last.get("neighbours", []))) if last else "-",
                str(last.get("ids_merged", "-")) if last else "-",
                str(len(last.get("rejected", {}))) if last else "-",
                f"{last['elapsed']:.3f}s" if last else "-",
                f"{last.get('clock_before')}->{last.get('clock_after')}" if last else "-",
                ", ".join(loaded) or "-",
            )
        )
    return rows


def print_status(result: Mapping[str, Any]) -> None:
    """Print what :func:`query_status` returned, as a table and details."""
    workers = result["workers"]
    headers = (
        "WORKER",
        "MINGLE",
        "TRANSPORT",
        "NEIGHBOURS",
        "IDS MERGED",
        "REJECTED",
        "TIME",
        "CLOCK",
        "PLUGINS",
    )
    rows = status_rows(workers)
    rows += [(node, "stock", "-", "-", "-", "-", "-", "-", why) for node, why in result["stock"].items()]
    if rows:
        click.echo(table(headers, rows))
    details = []
    for node, reply in workers.items():
        last = reply.get("last") or {}
        if last.get("neighbours"):
            details.append(f"{node}: neighbours {', '.join(last['neighbours'])}")
        for other, reason in (last.get("rejected") or {}).items():
            details.append(f"{node}: rejected the reply of {other}: {reason}")
        if last.get("skipped"):
            details.append(f"{node}: hello skipped: {last['skipped']}")
        if last.get("ids_dropped"):
            details.append(f"{node}: {last['ids_dropped']} ids dropped by policy {last.get('dropped_by')}")
        if last.get("ids_over_share"):
            details.append(f"{node}: {last['ids_over_share']} new ids not merged: over mingle_max_share")
        for other, extra in (last.get("duplicates") or {}).items():
            details.append(f"{node}: {extra} extra replies under the name {other}")
        if last.get("sources_unreached"):
            details.append(f"{node}: not reached: {', '.join(last['sources_unreached'])}")
        for plugin, fields in (reply.get("plugin_status") or {}).items():
            if isinstance(fields, Mapping) and fields:
                shown_fields = ", ".join(f"{k} {v}" for k, v in fields.items())
                details.append(f"{node}: plugin {plugin!r}: {shown_fields[:400]}")
        details += same_name_lines({node: reply})
        refused = reply.get("requests_refused") or {}
        if refused.get("count"):
            reasons = "; ".join(f"{n}: {r}" for n, r in (refused.get("last_reason_by_node") or {}).items())
            details.append(f"{node}: refused the ids of {refused['count']} hello requests: {reasons[:400]}")
        for p in reply.get("plugins", []):
            if p.get("status") in ("failed", "blocked"):
                details.append(f"{node}: plugin {p['name']} {p['status']}: {p.get('reason', '')}")
            took = p.get("import_seconds")
            if isinstance(took, (int, float)) and took > SLOW_IMPORT_SECONDS:
                details.append(f"{node}: plugin {p['name']} took {took:.1f}s to import")
    details += fault_lines(workers)
    if details:
        click.echo("")
        click.echo("\n".join(details))
    total = len(workers) + len(result["stock"])
    click.echo(f"\n{len(workers)} of {total} worker(s) answered {STATUS_COMMAND}.")
