"""Wire compatibility: our workers (Celery 5.4, 5.7) mingle with stock workers (5.3, 5.5, 5.6, 5.7).

One cluster per broker, every worker in the venv of its kind, one app
directory and one control exchange (``stock.py`` has no ``worker_consumer``,
``ours.py`` has ``mingle_plugins.consumer:Consumer``):

- an *original* worker of each kind holds its own batch of revoked ids, revoked
  on it alone (``destination=[node]``);
- then, for each kind in turn, a *newcomer* of that kind first starts
  ``--without-mingle`` with a ``--statedb``, gets its own batch revoked, stops,
  and restarts with mingle. Its hello request carries its batch to every
  original (request path: newcomer kind -> each original kind), and the replies
  carry each original's batch to it (reply path: each original kind -> newcomer
  kind). Each batch lives on one node only until then, so every id found says
  which pair carried it. The newcomer is stopped before the next kind's.

So both directions between each of our kinds and each stock version are
covered, and the stock/stock pairs check the harness itself. Our kinds run
twice: with the default settings (``ours.py``, stock behaviour) and with
``mingle_profile = "fast"`` (``ours_fast.py``: counted replies, quiet window,
bulk merge, digests), which must give the same result with stock neighbours.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mingle_plugins.hello.checks import ReplyLimits, check_body
from tests.conftest import BROKERS, claimed_broker
from tests.support.compat import KINDS, Kind, MixedCluster, build_all
from tests.support.workers import Worker

pytestmark = pytest.mark.slow

BATCH = 3
#: pidbox messages sent to the originals while a newcomer is down: its own clock
#: (restored from its statedb) is then well behind theirs unless mingle moves it.
CLOCK_BUMP = 40
SUMMARY = re.compile(
    r"mingle: summary: (?P<neighbours>\d+) neighbours, (?P<merged>\d+) accepted, "
    r"(?P<ids>\d+) ids merged, (?P<dropped>\d+) dropped by policy, "
    r"(?P<rejected>\d+) rejected, (?P<elapsed>[\d.]+)s"
)


def ids_only(kind: Kind) -> bool:
    """Celery 5.7 sends and answers ids only; 5.3 to 5.6 send the stamp dict."""
    return "==5.7." in kind.requirements[0]


@dataclass
class Mixed:
    broker: str
    cluster: MixedCluster
    originals: dict[str, Worker]  # kind label -> worker
    batches: dict[str, set[str]]  # kind label -> ids revoked on that original only

    def node(self, label: str) -> str:
        return self.originals[label].nodename


@pytest.fixture(scope="module")
def pythons() -> dict[str, Path]:
    """One venv per kind, built once (and reused across runs, see tests/support/venvs.py)."""
    return build_all()


@pytest.fixture(scope="module", params=[pytest.param(b, marks=getattr(pytest.mark, b)) for b in BROKERS])
def mixed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pythons: dict[str, Path]
) -> Iterator[Mixed]:
    url = claimed_broker(request, request.param)
    directory = tmp_path_factory.mktemp(f"compat-{request.param}")
    # On RabbitMQ an idle solo worker notices SIGTERM only when its event loop wakes up, after 10 s
    # by default; a broker heartbeat wakes it every heartbeat / 2 s.
    conf = {"broker_heartbeat": 4} if request.param == "rabbitmq" else {}
    cluster = MixedCluster(directory, url, pythons, conf)
    try:
        originals = {k.label: cluster.start_kind(k, f"w-{k.label}@compat", wait=False) for k in KINDS}
        for worker in originals.values():
            worker.wait_ready(timeout=120)
        batches = {label: {str(uuid.uuid4()) for _ in range(BATCH)} for label in originals}
        for label, ids in batches.items():
            cluster.client.control.revoke(sorted(ids), destination=[originals[label].nodename])
        nodes = [w.nodename for w in originals.values()]
        held = cluster.revoked_of(nodes)
        for label, worker in originals.items():
            assert held[worker.nodename] == batches[label], f"revoke with destination leaked: {held!r}"
        yield Mixed(request.param, cluster, originals, batches)
    finally:
        cluster.close()


def test_stock_hello_replies_pass_our_validation(mixed: Mixed) -> None:
    """Real hello replies of every kind, as our collector receives them (JSON), become a checked Reply."""
    nodes = [mixed.node(k.label) for k in KINDS]
    replies = (
        mixed.cluster.client.control.inspect(destination=nodes, limit=len(nodes), timeout=10).hello(
            "probe@compat", []
        )
        or {}
    )
    assert set(replies) == set(nodes), replies
    limits = ReplyLimits(max_ids=50_000, max_id_length=1024, max_clock=2**53)
    for kind in KINDS:
        reply = replies[mixed.node(kind.label)]
        revoked = reply["revoked"]
        if ids_only(kind):
            assert isinstance(revoked, list), f"{kind.label}: {reply!r}"
        else:
            assert isinstance(revoked, dict), f"{kind.label}: {reply!r}"
            for value in revoked.values():  # LimitedSet entries: [monotonic stamp, id] as JSON
                assert isinstance(value, list) and type(value[0]) in (int, float), f"{kind.label}: {reply!r}"
        assert type(reply["clock"]) is int and reply["clock"] > 0
        valid = check_body(mixed.node(kind.label), reply, limits)
        assert set(valid.ids) == mixed.batches[kind.label], kind.label
        assert valid.clock == reply["clock"]
        if not ids_only(kind):
            assert valid.stamps is not None
            assert all(type(s) is float and s >= 0 for s in valid.stamps.values())
        else:
            assert valid.stamps is None


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.label)
def test_newcomer_mingles_both_ways_after_restart(mixed: Mixed, kind: Kind, tmp_path: Path) -> None:
    node = f"new-{kind.label}@compat"
    try:
        _newcomer_mingles_both_ways(mixed, kind, node, tmp_path)
    finally:
        mixed.cluster.stop_node(node)  # a newcomer left running would answer the next one's hello


def _newcomer_mingles_both_ways(mixed: Mixed, kind: Kind, node: str, tmp_path: Path) -> None:
    cluster = mixed.cluster
    statedb = [f"--statedb={tmp_path / 'state.db'}"]
    originals = [mixed.node(k.label) for k in KINDS]

    # 1. The newcomer's own ids, known to it alone, kept in its statedb across the restart.
    cluster.start_kind(kind, node, args=["--without-mingle", *statedb], timeout=60)
    own = {str(uuid.uuid4()) for _ in range(BATCH)}
    cluster.client.control.revoke(sorted(own), destination=[node])
    assert cluster.revoked(node) == own
    clock_saved = cluster.clock(node)
    cluster.stop_node(node)

    cluster.bump_clocks(CLOCK_BUMP)
    held = cluster.revoked_of(originals)
    for label in mixed.batches:
        holders = sorted(n for n, ids in held.items() if ids & mixed.batches[label])
        assert holders == [mixed.node(label)], f"batch of {label} is not on its original alone: {holders}"
    assert not any(ids & own for ids in held.values())
    clocks_before = cluster.clocks_of(originals)
    assert max(clocks_before.values()) > clock_saved + CLOCK_BUMP // 2, (clocks_before, clock_saved)

    # 2. Restart with mingle.
    worker = cluster.start_kind(kind, node, args=statedb, timeout=60)
    clock_after = cluster.clock(node)
    now_held = cluster.revoked_of([node, *originals])
    log = worker.log()

    learnt = now_held[node]
    failures = [
        f"reply path {label} -> {kind.label}: missing {sorted(mixed.batches[label] - learnt)}"
        for label in mixed.batches
        if not mixed.batches[label] <= learnt
    ]
    failures += [
        f"request path {kind.label} -> {label}: missing {sorted(own - now_held[mixed.node(label)])}"
        for label in mixed.batches
        if not own <= now_held[mixed.node(label)]
    ]
    known_before = set().union(*held.values())
    if learnt != known_before | own:
        failures.append(
            f"{kind.label} differs from the ids known before by {sorted(learnt ^ (known_before | own))}"
        )
    if clock_after <= max(clocks_before.values()):
        failures.append(f"clock {clock_after} of {node} is not ahead of its neighbours' {clocks_before}")
    if kind.ours:
        summary = SUMMARY.search(log)
        if summary is None:
            failures.append("no 'mingle: summary' line")
        else:
            got = {k: int(v) for k, v in summary.groupdict().items() if k != "elapsed"}
            want = {
                "neighbours": len(originals),
                "merged": len(originals),
                "ids": len(known_before - own),
                "dropped": 0,
                "rejected": 0,
            }
            if got != want:
                failures.append(f"summary {summary[0]!r}, expected {want}")
            # The fast profile stops collecting once every neighbour answered (counted on Redis, a
            # 50 ms quiet window elsewhere), stock neighbours included; waiting for the idle timeout
            # (mingle_hello_timeout = 3 s in FAST_CONF) would take at least 3 s.
            if kind.app == "ours_fast" and float(summary["elapsed"]) >= 2.5:
                failures.append(f"fast profile took {summary['elapsed']}s: it waited for the idle timeout")
    else:
        if f"mingle: sync with {len(originals)} nodes" not in log or "mingle: sync complete" not in log:
            failures.append(f"stock mingle did not sync with the {len(originals)} originals")
    if re.search(r"mingle: (sync with \S+ failed|rejected)", log):
        failures.append("a reply failed or was rejected")
    for label, original in mixed.originals.items():
        if re.search(r"Control command error|Traceback", original.log()):
            failures.append(f"{label} logged an error answering a control command")
    assert not failures, "\n".join(failures) + f"\n--- {node} log ---\n{log[-4000:]}"
