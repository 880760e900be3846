"""The training job's failure paths: finished pretraining is never thrown away, input checks run before any
training step, and only the product's own errors are reported as the user's to fix."""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS, run_train

import client_train
import training.train as train_module
from dataset.reader import DatasetError
from jobs.outputs import ResumeError
from training.settings import build_settings
from training.train import TrainJob, run


def _job(dataset: Path, runs: Path, **overrides) -> TrainJob:
    settings = build_settings({**TINY_SETTINGS, **overrides})
    return TrainJob(dataset, torch.device("cpu"), "tiny", settings, runs)


def test_a_failure_after_pretraining_keeps_the_checkpoint_and_resume_goes_straight_to_export(
    tiny_dataset, tmp_path, monkeypatch, caplog
):
    runs = tmp_path / "runs"

    def broken_export(*args, **kwargs):
        raise RuntimeError("the archiver broke")

    monkeypatch.setattr(train_module, "export", broken_export)
    with pytest.raises(RuntimeError, match="the archiver broke"):
        run(_job(tiny_dataset, runs))
    [kept] = (runs / "models").glob(".interrupted-*")
    [ckpt] = kept.glob("checkpoints/*.ckpt")
    steps = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert steps > 0
    assert "failed after pretraining" in caplog.text and "resume='last'" in caplog.text
    assert not (runs / "metric").exists()

    monkeypatch.undo()
    trial = run(_job(tiny_dataset, runs, resume="last"))
    folder = Path(trial["model_path"])
    info = json.loads((folder / "model_info.json").read_text())
    assert info["pretraining"]["steps"] == steps  # no step trained again
    assert not list((runs / "models").glob(".interrupted-*"))  # consumed by the finished run
    # ...but its checkpoint was not lost with it: the resumed run made no step and wrote none, so the one it
    # resumed from is committed with the model, and a next version can start from the folder.
    [committed] = folder.glob("checkpoints/*.ckpt")
    assert torch.load(committed, map_location="cpu", weights_only=False)["global_step"] == steps
    child = run(_job(tiny_dataset, tmp_path / "runs2", init=str(folder)))
    child_info = json.loads((Path(child["model_path"]) / "model_info.json").read_text())
    assert child_info["init"]["kind"] == "model folder" and child_info["init"]["parent"]["model_path"] == str(folder)


def test_a_failure_before_pretraining_ends_keeps_nothing(tiny_dataset, tmp_path, monkeypatch):
    runs = tmp_path / "runs"

    def broken_fit(*args, **kwargs):
        raise RuntimeError("a bug in pretraining")

    monkeypatch.setattr(train_module, "pretrain", broken_fit)
    with pytest.raises(RuntimeError):
        run(_job(tiny_dataset, runs))
    assert list((runs / "models").iterdir()) == []


def test_valid_with_one_image_per_class_fails_before_any_training_step(tiny_dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    for cls in (ds / "valid" / "images").iterdir():
        for extra in sorted(cls.iterdir())[1:]:
            extra.unlink()
    runs = tmp_path / "runs"
    proc = run_train(ds, runs)
    assert proc.returncode == 2 and "only 1 readable image per class" in proc.stderr
    assert "pretraining:" not in proc.stderr and "train images" not in proc.stderr  # not even decoded
    assert not (runs / "metric").exists() and not list((runs / "models").glob("*/checkpoints/*"))


def _main_args(tiny_dataset: Path, runs: Path) -> argparse.Namespace:
    return client_train.get_args_parser().parse_args(
        ["--dataset_path", str(tiny_dataset), "--device", "cpu", "--runs_dir", str(runs), "--annotation_data", "{}"]
    )


def test_a_bug_is_not_reported_as_a_user_error(tiny_dataset, tmp_path, monkeypatch):
    # ValueError from deep inside torch, sklearn or Lightning is a bug: it propagates (traceback, exit code 1).
    def bug(job):
        raise ValueError("Expected more than 1 value per channel when training")

    monkeypatch.setattr(train_module, "run", bug)
    with pytest.raises(ValueError, match="per channel"):
        client_train.main(_main_args(tiny_dataset, tmp_path))


def test_a_dataset_error_is_one_line_and_exit_2(tiny_dataset, tmp_path, monkeypatch, caplog):
    def user_error(job):
        raise DatasetError("valid/images has no class folders")

    monkeypatch.setattr(train_module, "run", user_error)
    assert client_train.main(_main_args(tiny_dataset, tmp_path)) == 2
    assert "valid/images has no class folders" in caplog.text


def test_a_resumed_run_continues_its_time_schedule(tiny_dataset, tmp_path):
    """The cosine schedule's time part counts the interrupted run's seconds too (Lightning's Timer restores them):
    a run resumed half-way through its budget starts at half the peak lr, not at the peak. A resumed run's
    optimiser takes this run's lr (the predictor's too) and momentum, not the checkpoint's."""
    from datetime import timedelta

    import pytorch_lightning as pl

    from dataset.reader import Skipped, read_unlabelled
    from training.augment import augment_for
    from training.model import SimSiam
    from training.pretrain_data import PretrainImages, pretrain_loader

    s = build_settings({**TINY_SETTINGS, "epochs": 1, "time_budget_s": 600})
    data = PretrainImages(read_unlabelled(tiny_dataset), s.input_size, augment_for(s), 64, Skipped(), 1)
    loader = pretrain_loader(data, s.batch_size, 0)

    def fit(settings, ckpt: Path | None, folder: Path, steps: int | None = None) -> list[float]:
        model = SimSiam(settings, steps_per_epoch=len(loader), global_batch=settings.batch_size)
        seen: list[float] = []

        class Watch(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, *args):
                groups = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
                seen.append(groups["encoder"] / pl_module.peak_lr)
                assert groups["predictor"] == pl_module.peak_lr  # the predictor's lr is fixed, by name
                # this run's settings, also when the optimiser state comes from a run with others
                assert {g["momentum"] for g in trainer.optimizers[0].param_groups} == {settings.momentum}
                if steps is not None and len(seen) >= steps:
                    trainer.should_stop = True

        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=settings.epochs,
            max_time=timedelta(seconds=settings.time_budget_s),
            callbacks=[Watch()],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(folder),
        )
        trainer.fit(model, loader, ckpt_path=str(ckpt) if ckpt else None)
        if ckpt is None:
            trainer.save_checkpoint(folder / "a.ckpt")
        return seen

    first = fit(s, None, tmp_path)
    assert first[0] > 0.99  # a fresh run starts at the peak
    ckpt = torch.load(tmp_path / "a.ckpt", map_location="cpu", weights_only=False)
    [key] = [k for k in ckpt["callbacks"] if k.startswith("Timer")]
    ckpt["callbacks"][key]["time_elapsed"]["train"] = 300.0  # as if the first run had trained for half the budget
    torch.save(ckpt, tmp_path / "half.ckpt")
    # step progress stays ~0; another lr and momentum than the interrupted run's: the resumed optimiser takes them
    longer = build_settings(
        {**TINY_SETTINGS, "epochs": 1000, "time_budget_s": 600, "lr": 2 * s.lr, "momentum": s.momentum - 0.1}
    )
    resumed = fit(longer, tmp_path / "half.ckpt", tmp_path, steps=2)
    assert resumed and 0.45 < resumed[0] < 0.55, resumed[:3]  # cos schedule at progress ~0.5, not back at the peak


@pytest.mark.parametrize(
    ("device", "devices", "strategy", "sync"),
    [("cuda", 2, "auto", True), ("cuda", 4, "ddp", True), ("cuda", 1, "auto", False), ("cpu", 2, "ddp", False)],
)
def test_syncbatchnorm_whenever_more_than_one_gpu_process_trains(device, devices, strategy, sync, monkeypatch):
    from training.train import device_args

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # an H100-class GPU
    s = build_settings({"devices": devices, "strategy": strategy})
    args = device_args(s, torch.device(device, 0) if device == "cuda" else torch.device("cpu"))
    assert args["sync_batchnorm"] is sync
    assert args["devices"] == ([0] if device == "cuda" and devices == 1 else devices)
    if device == "cuda":
        assert args["precision"] == "bf16-mixed"
    assert args["benchmark"] is (device == "cuda")  # cuDNN autotuning for the fixed crop size


def test_the_batch_is_each_ranks_share_so_every_rank_makes_steps():
    from training.train import per_rank_batch

    assert per_rank_batch(build_settings({"batch_size": 128}), 1000) == 128
    assert per_rank_batch(build_settings({"batch_size": 128, "devices": 4}), 200) == 50  # was 128: 0 steps per rank
    with pytest.raises(DatasetError, match="fewer devices"):
        per_rank_batch(build_settings({"devices": 8}), 12)


def test_a_failure_in_the_middle_of_pretraining_keeps_the_last_checkpoint_and_resume_finishes(
    tiny_dataset, tmp_path, monkeypatch, caplog
):
    """A CUDA out-of-memory error, a crashed loader or a full disk at epoch 3 of 4 keeps epoch 2's checkpoint;
    resume='last' continues from it, finishes, and counts the whole run's steps and seconds."""
    from training.model import SimSiam

    runs = tmp_path / "runs"
    real_step = SimSiam.training_step

    def failing_step(self, batch, batch_idx):
        if self.global_step == 2:  # 1 step per epoch here: epochs 1 and 2 are done and checkpointed
            raise RuntimeError("CUDA out of memory (standing in)")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(SimSiam, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(_job(tiny_dataset, runs, epochs=4))
    [kept] = (runs / "models").glob(".interrupted-*")
    [ckpt] = kept.glob("checkpoints/*.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2 and saved["epoch"] == 1
    [timer] = [v for k, v in saved["callbacks"].items() if k.startswith("Timer")]
    first_part = timer["time_elapsed"]["train"]
    assert first_part > 0
    assert "failed during pretraining" in caplog.text and "resume='last'" in caplog.text
    assert not (runs / "metric").exists()

    monkeypatch.undo()
    trial = run(_job(tiny_dataset, runs, epochs=4, resume="last"))
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["pretraining"]["steps"] == 4 and info["pretraining"]["steps_this_run"] == 2
    # The whole run's pretraining time: the interrupted part is in it.
    assert trial["train_consuming"]["SimSiam"]["train_time"] > first_part
    assert not list((runs / "models").glob(".interrupted-*"))


def test_resume_last_takes_only_a_checkpoint_of_the_same_job(tiny_dataset, tmp_path, monkeypatch):
    """Jobs share a runs folder: a checkpoint of another dataset or another model shape is never resumed, the
    error names what differs, and that job's checkpoint stays for its own resume."""
    runs = tmp_path / "runs"
    monkeypatch.setattr(train_module, "export", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("broke")))
    with pytest.raises(RuntimeError):
        run(_job(tiny_dataset, runs))
    [kept] = (runs / "models").glob(".interrupted-*")
    monkeypatch.undo()

    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    with pytest.raises(ResumeError, match=r"dataset: .*other.* here") as e:
        run(_job(other, runs, resume="last"))
    assert "train_files" not in str(e.value)  # the same file names under another root
    shutil.copy(next((tiny_dataset / "valid").rglob("*.png")), other / "train" / "images" / "extra.png")
    with pytest.raises(ResumeError, match="train_files: '19 files"):
        run(_job(other, runs, resume="last"))
    with pytest.raises(ResumeError, match="proj_dim: 32 here, 64 in the checkpoint"):
        run(_job(tiny_dataset, runs, resume="last", proj_dim=32))
    with pytest.raises(ResumeError, match="backbone: 'resnet34' here"):
        run(_job(tiny_dataset, runs, resume=str(next(kept.glob("checkpoints/*.ckpt"))), backbone="resnet34"))
    assert kept.is_dir() and list(kept.glob("checkpoints/*.ckpt"))  # left alone
    assert not list((runs / "models").glob(".staging-*"))  # refused before a run folder was used

    trial = run(_job(tiny_dataset, runs, resume="last"))  # its own job resumes it
    assert trial["metric_value"] >= 0 and not kept.exists()


def test_fp16_on_a_cpu_is_one_precision_in_every_stage(tiny_dataset, tmp_path, monkeypatch):
    """precision 16-mixed on a CPU (or a GPU job that fell back to it) runs bf16 in pretraining and refine alike,
    and model_info.json records what ran."""
    import training.refine as refine_module

    seen = []
    real_refine = train_module.refine

    def spy(*args, **kwargs):
        seen.append(args[5].precision)  # the RefineRecipe
        return real_refine(*args, **kwargs)

    monkeypatch.setattr(train_module, "refine", spy)
    assert refine_module.refine is real_refine
    trial = run(_job(tiny_dataset, tmp_path / "runs", precision="16-mixed"))
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["pretraining"]["precision"] == "bf16-mixed" and seen == ["bf16-mixed"]
