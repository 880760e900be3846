"""jobs/stop.py: a stop signal that some code swallowed is raised again at the next step boundary."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS

from jobs import stop
from training.model import SimSiam
from training.settings import build_settings
from training.train import TrainJob, run


@pytest.fixture(autouse=True)
def forget_requests() -> Iterator[None]:
    stop.reset()
    yield
    stop.reset()


def swallowed_request(signum: int = signal.SIGINT) -> None:
    """What CPython's file finaliser does with an exception raised while it asks `closed` (iobase_finalize)."""
    with contextlib.suppress(KeyboardInterrupt):
        stop.request(signum)


def test_a_swallowed_request_is_raised_again_and_nothing_before_it() -> None:
    stop.check()  # no request: nothing to raise
    swallowed_request(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match=f"signal {int(signal.SIGTERM)}"):
        stop.check()
    swallowed_request(signal.SIGINT)  # a second signal does not replace the first
    with pytest.raises(KeyboardInterrupt, match=f"signal {int(signal.SIGTERM)}"):
        stop.check()


def test_install_keeps_an_ignored_sigint_ignored_and_routes_sigterm() -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell's background job
        stop.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is stop.request
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        stop.install()
        assert signal.getsignal(signal.SIGINT) is stop.request
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_pretraining_stops_after_a_swallowed_ctrl_c_and_keeps_its_checkpoint(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flake this module fixes, made certain: the Ctrl-C is lost at the end of epoch 0 (where Lightning saves
    the checkpoint) and the run must still stop within the next step, with the checkpoint kept for resume."""
    runs = tmp_path / "runs"
    epoch_end = SimSiam.on_train_epoch_end
    steps: list[int] = []

    def end_and_lose_a_ctrl_c(self: SimSiam) -> None:
        epoch_end(self)
        steps.append(self.global_step)
        if len(steps) == 1:
            swallowed_request()

    monkeypatch.setattr(SimSiam, "on_train_epoch_end", end_and_lose_a_ctrl_c)
    settings = build_settings({**TINY_SETTINGS, "epochs": 50, "batch_size": 8})
    with pytest.raises((KeyboardInterrupt, SystemExit)):  # Lightning turns KeyboardInterrupt into exit(1)
        run(TrainJob(tiny_dataset, torch.device("cpu"), "stop", settings, runs))
    assert len(steps) == 1  # no second epoch ended
    [kept] = (runs / "models").glob(".interrupted-*")
    assert list(kept.glob("checkpoints/*.ckpt"))
    assert not (runs / "metric").exists()
