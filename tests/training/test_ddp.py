"""DDP: two-process training on CPU (gloo) end to end (one model folder, one trial.txt, from rank 0), each rank's
own share of the train set across epochs, and one learning rate on every rank."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY_SETTINGS, run_train
from torch.utils.data import DistributedSampler

from training.model import SimSiam, cosine_lr
from training.pretrain_data import RankShare
from training.settings import SettingsError, build_settings


# batch 16 over 18 train images: each rank gets 9, and a batch of 16 with drop_last gave every rank 0 steps (a
# random encoder exported as trained) until the batch was capped at the rank's share (per_rank_batch, unit-tested
# in test_train.py). 5 epochs: a rank that met other ranks' images (DistributedSampler deals the set out again
# every epoch) would decode ~16.
def test_two_process_ddp_on_cpu_writes_one_model_folder(tiny_dataset, tmp_path):
    epochs = 5
    settings = {**TINY_SETTINGS, "strategy": "ddp", "devices": 2, "batch_size": 16, "epochs": epochs}
    proc = run_train(tiny_dataset, tmp_path, trial_name="ddp", settings=settings, device="cpu", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr or "Initializing distributed: GLOBAL_RANK: 1" in proc.stderr
    models = list((tmp_path / "models").iterdir())
    assert len(models) == 1 and not models[0].name.startswith("."), models
    trial = json.loads((tmp_path / "metric" / "trial.txt").read_text())
    assert Path(trial["model_path"]) == models[0].resolve()
    assert (models[0] / "SimSiam_ddp.mar").is_file()
    info = json.loads((models[0] / "model_info.json").read_text())
    # lr scaled by the global batch: 2 processes x 9 (16 capped at each rank's share)
    hparams = (models[0] / "logs" / "hparams.yaml").read_text()
    assert "devices: 2" in hparams and info["pretraining"]["steps"] == epochs  # 9 images a rank: 1 batch an epoch
    assert proc.stdout.count("valid accuracy") == 1  # the downstream evaluation ran once
    # Each rank decoded its own share (9 of 18) over every epoch, not the whole set.
    decoded = sorted(re.findall(r"rank (\d): (\d+) of 18 train images decoded", proc.stderr))
    assert [r for r, _ in decoded] == ["0", "1"], proc.stderr[-3000:]
    assert all(8 <= int(n) <= 9 for _, n in decoded), decoded


def test_each_rank_keeps_its_share_and_shuffles_it_every_epoch():
    """RankShare: disjoint equal shares that stay put over epochs, each in a new order every epoch; the
    DistributedSampler it replaces has each of 8 ranks meet most of the set within 20 epochs."""
    n, world, epochs = 1001, 8, 20
    samplers = [RankShare(n, world, seed=3) for _ in range(world)]
    met: list[set[int]] = [set() for _ in range(world)]
    orders = []
    for epoch in range(epochs):
        for rank, sampler in enumerate(samplers):
            sampler.set_epoch(epoch)
            order = sampler.indices(rank).tolist()
            assert len(order) == len(sampler) == n // world
            met[rank].update(order)
            if rank == 0:
                orders.append(order)
    assert all(len(m) == n // world for m in met)  # one share each, across all epochs
    assert len(set().union(*met)) == world * (n // world)  # disjoint
    assert len({tuple(o) for o in orders}) == epochs  # reshuffled every epoch
    assert sorted(met[0]) != list(range(n // world))  # a seeded deal, not the first images in order (one class)
    dealt_again: set[int] = set()
    for epoch in range(epochs):
        reference = DistributedSampler(range(n), num_replicas=world, rank=0, shuffle=True, seed=3)
        reference.set_epoch(epoch)
        dealt_again.update(reference)
    assert len(dealt_again) > 0.8 * n


def test_every_rank_takes_rank_0s_clock_for_the_time_budget_lr():
    """Under a time budget the cosine schedule follows the elapsed time: rank 0's, broadcast, not each rank's
    own clock (replicas stepping with different lrs)."""
    s = build_settings({**TINY_SETTINGS, "epochs": 1000, "time_budget_s": 100})
    model = SimSiam(s, steps_per_epoch=1)
    optimizer = model.configure_optimizers()
    broadcast = []

    def rank_0s(value, src=0):
        broadcast.append((value, src))
        return 50.0  # rank 0 is half-way through the budget

    model._trainer = SimpleNamespace(world_size=2, global_step=0, strategy=SimpleNamespace(broadcast=rank_0s))
    model.optimizers = lambda: optimizer
    model.elapsed_s = lambda: 10.0  # this rank's own clock
    model.on_train_batch_start(None, 0)
    [encoder] = [g for g in optimizer.param_groups if g["name"] == "encoder"]
    assert broadcast == [(10.0, 0)]
    assert encoder["lr"] == pytest.approx(cosine_lr(model.peak_lr, 0.5))


def test_ddp_spawn_is_not_offered():
    with pytest.raises(SettingsError, match="use ddp"):
        build_settings({"strategy": "ddp_spawn"})
