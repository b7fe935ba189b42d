"""The demo's signal handling, without workers: a signal whose exception was swallowed by library
code still ends the demo with 128 + the signal, and a second signal does not break the clean-up."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from mingle_plugins import demo as demo_module


def run_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, story: Any) -> int:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(demo_module.tempfile, "tempdir", None)
    monkeypatch.setattr(demo_module.Demo, "run", story)
    return demo_module.run_demo(workers=1, revoke=1)


def test_a_swallowed_sigint_still_ends_the_demo_with_130(monkeypatch, tmp_path, capsys) -> None:
    def story(self: demo_module.Demo) -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises here...
        except BaseException:  # ...and library code swallows it (kombu's clean-up paths do)
            pass
        return 0  # the story went on as if nothing happened

    assert run_with(monkeypatch, tmp_path, story) == 130
    assert "interrupted: stopping the workers" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # the folder was removed


def test_the_next_checkpoint_raises_the_signal_again(monkeypatch, tmp_path) -> None:
    said: list[str] = []

    def story(self: demo_module.Demo) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException:
            pass
        self.say("after the signal")  # raises Interrupted again: nothing more is said
        said.append("not reached")
        return 0

    assert run_with(monkeypatch, tmp_path, story) == 128 + signal.SIGTERM
    assert said == []


def test_a_second_signal_during_the_clean_up_is_ignored(monkeypatch, tmp_path) -> None:
    def story(self: demo_module.Demo) -> int:
        self.interrupted = signal.SIGINT  # the first one came
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: returns, does not raise
        return 0

    assert run_with(monkeypatch, tmp_path, story) == 130


def test_the_handlers_are_put_back(monkeypatch, tmp_path) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    run_with(monkeypatch, tmp_path, lambda self: 0)
    assert {sig: signal.getsignal(sig) for sig in before} == before
