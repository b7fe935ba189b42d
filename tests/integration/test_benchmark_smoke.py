"""The benchmark scripts still run: their quickest modes against real workers on Redis.

No timing is asserted (the machine may be loaded); only that every variant was
measured, against its neighbours, and that the tables are well formed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import services

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mingle_bench.py"
ROLLOUT = SCRIPT.with_name("rollout_bench.py")
JUDGE = SCRIPT.with_name("judge.py")
VARIANTS = ("stock", "default", "fast")


def table(lines: list[str], header_start: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and data rows of the Markdown table whose header starts so."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert set(lines[start + 1].strip("|").split("|")) == {"---"}, lines[start + 1]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), (header, line)
        rows.append(cells)
    return header, rows


def run_script(script: Path, args: list[str]) -> list[str]:
    """Run a benchmark script to the end; its stdout lines (the first names the versions)."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("celery "), proc.stdout
    return lines


@pytest.mark.redis
def test_quick_benchmark_prints_a_well_formed_table(tmp_path: Path) -> None:
    services.require("redis")
    out_json = tmp_path / "results.json"
    lines = run_script(SCRIPT, ["--quick", "--json", str(out_json)])

    header, rows = table(lines, "| broker | N | R | variant |")
    assert header[:4] == ["broker", "N", "R", "variant"]
    assert [row[3] for row in rows] == list(VARIANTS)
    for row in rows:
        cell = dict(zip(header, row, strict=True))
        assert (cell["broker"], cell["N"], cell["R"]) == ("redis", "1", "0")
        assert float(cell["wall ms"]) >= 0
        assert float(cell["rx KiB"]) > 0  # the reply of the neighbour was read
        assert float(cell["hwm MiB"]) > 10  # a real Python process
        assert cell["nodes"] == "1", row  # every variant heard the one neighbour
        if cell["variant"] == "stock":
            assert cell["step cpu ms"] == "-" and cell["ids merged"] == "-"
        else:  # answered mingle_status
            assert float(cell["step cpu ms"]) >= 0 and cell["ids merged"] == "0"

    _, ratio_rows = table(lines, "| broker | N | R | wall stock/default |")
    assert len(ratio_rows) == 1
    for cell in ratio_rows[0][3:]:
        assert cell == "-" or cell == "inf" or float(cell.rstrip("x")) > 0, ratio_rows

    results = json.loads(out_json.read_text())
    assert sorted(m["variant"] for m in results) == sorted(VARIANTS)
    for m in results:
        assert m["lines"][0] == "mingle: searching for neighbors", m
        assert any(line.startswith("mingle: sync with 1 nodes") for line in m["lines"]), m


@pytest.mark.redis
def test_tiny_rollout_prints_a_well_formed_table(tmp_path: Path) -> None:
    """2 neighbours holding 100 ids, 2 newcomers at once per variant: each learns the 100 ids."""
    services.require("redis")
    out_json = tmp_path / "rollout.json"
    args = ["--neighbours", "2", "--newcomers", "2", "--revoked", "100", "--background", "0"]
    lines = run_script(ROLLOUT, [*args, "--json", str(out_json)])

    header, rows = table(lines, "| broker | N | K | R | variant |")
    assert [row[4] for row in rows] == ["stock", "fast"]
    for row in rows:
        cell = dict(zip(header, row, strict=True))
        assert (cell["broker"], cell["N"], cell["K"], cell["R"]) == ("redis", "2", "2", "100")
        assert cell["ids learned (min/R)"] == "100/100", row
        assert cell["all got R"] == "yes", row
        assert float(cell["wall median ms"]) <= float(cell["wall max ms"])
        assert cell["hellos taken within 1 s"].endswith("/4"), row  # K x N (newcomer, neighbour) pairs
        assert float(cell["broker MiB"]) > 0 and float(cell["workers' TCP MiB"]) > 0

    _, ratio_rows = table(lines, "| broker | N | K | R | wall median stock/fast |")
    assert len(ratio_rows) == 1
    for ratio in ratio_rows[0][4:]:
        assert ratio == "-" or float(ratio.rstrip("x")) > 0, ratio_rows

    rounds = json.loads(out_json.read_text())
    assert [r["variant"] for r in rounds] == ["stock", "fast"]
    for r in rounds:
        assert len(r["newcomer_results"]) == 2, r
        assert len({n["nodename"] for n in r["newcomer_results"]}) == 2
        for n in r["newcomer_results"]:
            assert n["ids_learned"] == 100 and n["ids_extra"] == 0, n
            assert n["lines"][0] == "mingle: searching for neighbors", n
            assert n["nodes_synced"] >= 2, n  # both neighbours (and maybe the other newcomer)
            assert len(n["hello_waits_s"]) == 2 and None not in n["hello_waits_s"], n  # both took it
    names = [n["nodename"] for r in rounds for n in r["newcomer_results"]]
    assert len(set(names)) == len(names)  # new node names each round


@pytest.mark.redis
def test_the_judge_quick_run_prints_its_tables_and_leaves_no_key(tmp_path: Path) -> None:
    """``judge.py --quick``: one cluster per variant, each on its own Redis database; every
    newcomer heard its neighbour, the ratio rows are ours / stock, and the run's keys are gone."""
    import redis

    services.require("redis")
    out_json = tmp_path / "judge.json"
    lines = run_script(JUDGE, ["--quick", "--json", str(out_json)])

    header, rows = table(lines, "| broker | N | R | variant | ready ms |")
    assert [row[3] for row in rows] == list(VARIANTS)
    for row in rows:
        cell = dict(zip(header, row, strict=True))
        assert (cell["broker"], cell["N"], cell["R"]) == ("redis", "1", "0")
        low, median, high = (float(v) for v in cell["ready ms"].split(" / "))
        assert 0 < low <= median <= high
        assert cell["heard"] == "1", row  # no "!": the newcomer heard its neighbour
    _, ratio_rows = table(lines, "| broker | N | R | variant | ready |")
    assert [row[3] for row in ratio_rows] == ["default", "fast"]
    assert "Deaf newcomers (heard fewer neighbours than were started): 0" in lines

    data = json.loads(out_json.read_text())
    assert data["meta"]["command"].startswith("judge.py --quick")
    assert sorted(m["variant"] for m in data["measurements"]) == sorted(VARIANTS)
    assert all(not m["deaf"] and m["ready_ms"] > m["mingle_ms"] for m in data["measurements"])
    assert {r["variant"] for r in data["ratios"]} == {"default", "fast"}
    tags = {m["nodename"].split("-")[-1].split("@")[0] for m in data["measurements"]}
    for db in range(16):  # the run's keys (its tag is in every name) were deleted
        client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{db}")
        try:
            assert not any(any(tag in key.decode() for tag in tags) for key in client.scan_iter(count=1000))
        finally:
            client.close()


@pytest.mark.redis
def test_the_answer_cost_benchmark_measures_each_request(tmp_path: Path) -> None:
    """A neighbour holding 2,000 ids answers 3 digest requests, steady and after 2 revokes each."""
    services.require("redis")
    out_json = tmp_path / "answer.json"
    script = SCRIPT.with_name("answer_cost.py")
    args = ["--revoked", "2000", "--hellos", "3", "--change", "0,2", "--json", str(out_json)]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _, rows = table(proc.stdout.splitlines(), "| code | ids revoked before each |")
    assert [row[1] for row in rows] == ["0", "2"] and all("this checkout" in row[0] for row in rows)
    results = json.loads(out_json.read_text())
    assert [r["change"] for r in results] == [0, 2]
    for r in results:
        assert len(r["cpu_ms"]) == 3 and all(ms > 0 for ms in r["cpu_ms"]), r  # the worker ran for each
        assert r["min"] <= r["median"] <= r["max"]
