"""The training job, in named phases: pretrain (SimSiam, unlabelled) -> downstream (linear probe of the frozen
features, then refine: LP-FT of encoder + head on valid) -> export (TorchScript + .mar) -> record (trial.txt)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, Timer, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from sklearn.metrics import confusion_matrix
from torch import nn

from dataset.reader import DatasetError, LabelledSplit, Skipped, read_labelled, read_unlabelled, readable
from dataset.stream import StreamedImages, StreamState
from evaluation.confusion_plot import plot_confusion_matrix
from evaluation.features import run_frozen
from evaluation.probe import ProbeResult, linear_probe
from export.archive import CLASSES_FILE, PRESET_FILE, build_mar, read_class_names, write_class_names
from export.portable import FORMATS, ONNX_FILE, onnx_opset
from export.torchscript import export_classifier
from handler.eval_preset import EvalPreset
from jobs.device import resolve_precision
from jobs.outputs import FINGERPRINT_FILE, RunFolder, atomic_write_json, find_resume_checkpoint, round4
from training.augment import augment_for, augments_on_device
from training.init import InitWeights, apply_init, read_init
from training.model import SimSiam
from training.plots import plot_training_curves
from training.pretrain_data import PretrainImages, pretrain_loader, stream_loader
from training.refine import RefineRecipe, RefineResult, refine
from training.settings import Settings

log = logging.getLogger(__name__)
MODEL_NAME = "SimSiam"


@dataclass
class TrainJob:
    dataset: Path
    device: torch.device
    trial_name: str
    settings: Settings
    runs_dir: Path
    started: float | None = None  # time.monotonic() when the process started: `total` counts the imports too
    # Set by prepare_data, before anything is decoded: what identifies this job's pretraining, and the
    # interrupted run it continues (resume), if any.
    fingerprint: dict | None = None
    resume_from: Path | None = None
    init: InitWeights | None = None  # set by run(): the weights pretraining starts from (settings.init)

    @property
    def model_name(self) -> str:
        return f"{MODEL_NAME}_{self.trial_name}"

    @cached_property
    def precision(self) -> str:
        """Resolved once: pretraining, refine and model_info.json use the same precision."""
        return resolve_precision(self.settings.precision, self.device)


def run(job: TrainJob) -> dict:
    """Run the whole job; returns the trial dict written to runs/metric/trial.txt."""
    t0 = job.started if job.started is not None else time.monotonic()
    pl.seed_everything(job.settings.seed, workers=True)
    # Read and checked against this job's model before anything is written: a mismatch is the user's to fix.
    job.init = read_init(job.settings.init, SimSiam(job.settings)) if job.settings.init else None
    if global_rank(job.settings) != 0:
        # DDP workers (torchrun, SLURM, Lightning's launcher) train but write nothing: rank 0 owns the outputs.
        with tempfile.TemporaryDirectory(prefix="simsiam-rank-") as scratch:
            return _train_and_export(job, None, Path(scratch), *prepare_data(job, with_valid=False), t0)
    run_dir = RunFolder(job.runs_dir)  # an unwritable runs dir fails here, before any work
    done: list[str] = []  # the phases that finished
    try:
        return _train_and_export(job, run_dir, run_dir.path, *prepare_data(job), t0, done)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM (Lightning turns them into SystemExit)
        kept = run_dir.keep_for_resume()
        if kept:
            log.error(
                "interrupted; the last checkpoint is kept in %s: resume with advance_settings resume='last'", kept
            )
        raise
    except BaseException as e:
        # Hours of pretraining are never thrown away, whatever fails and whenever: a CUDA out-of-memory error or a
        # crashed loader at epoch 90 keeps epoch 89's checkpoint (resume continues pretraining from it); a failure
        # after pretraining (probe, refine, export, a full disk) keeps the finished one, and resume goes straight
        # to the downstream phase. Without a complete checkpoint nothing is worth keeping and the folder goes.
        kept = run_dir.keep_for_resume()
        if kept is not None:
            where = "after pretraining" if "pretrain" in done else "during pretraining"
            then = "pretraining will not run again" if "pretrain" in done else "pretraining continues from it"
            log.error(
                "the run failed %s (%s: %s); the last checkpoint is kept in %s: once the cause is fixed, finish "
                "the run with advance_settings resume='last' (%s)",
                where,
                type(e).__name__,
                e,
                kept,
                then,
            )
        raise


def prepare_data(
    job: TrainJob, with_valid: bool = True
) -> tuple[PretrainImages | StreamedImages, LabelledSplit | None, EvalPreset, Skipped]:
    """The train images (a file list, or a shard location), then `valid`, checked whole (it is small). Only rank 0
    uses `valid` (with_valid=False elsewhere): the other DDP processes never read it."""
    s = job.settings
    preset = EvalPreset(input_size=s.input_size)
    skipped = Skipped()
    threads = min(8, os.cpu_count() or 1)
    on_device = augments_on_device(s, job.device)
    train_set: PretrainImages | StreamedImages
    if s.train_shards:  # streamed from LitData shards (a folder or s3://): their index read, nothing decoded
        train_set = StreamedImages(s.train_shards, 2 * s.input_size, s.cache_mb, s.seed)
        job.fingerprint = fingerprint(job, train_files=train_set.fingerprint(), source=train_set.url)
    else:  # the file list only: each image is decoded when a loader worker first meets it
        train_paths = read_unlabelled(job.dataset)
        job.fingerprint = fingerprint(job, train_files=_file_list_digest(job, train_paths))
    # A resume that names another job's checkpoint fails here, before any image is decoded.
    job.resume_from = find_resume_checkpoint(job.runs_dir.resolve(), s.resume, job.fingerprint)

    def train_images() -> PretrainImages | StreamedImages:  # made last: a bad `valid` fails before its log lines
        if s.train_shards:
            return train_set
        return PretrainImages(train_paths, s.input_size, augment_for(s), s.cache_mb, skipped, on_device=on_device)

    if not with_valid:
        return train_images(), None, preset, skipped
    valid = read_labelled(job.dataset, "valid")
    keep = [i for i, ok in enumerate(readable(valid.paths, preset.resize_size, skipped, threads)) if ok]
    valid.paths = [valid.paths[i] for i in keep]
    valid.labels = [valid.labels[i] for i in keep]
    if len(set(valid.labels)) < 2:
        raise DatasetError(f"{valid.root} has fewer than 2 classes with readable images")
    present = sorted(set(valid.labels))
    if unreadable := [c for i, c in enumerate(valid.classes) if i not in present]:
        log.warning("class(es) %s have no readable image in %s and are left out of the model", unreadable, valid.root)
    valid.classes = [valid.classes[c] for c in present]
    relabel = {old: new for new, old in enumerate(present)}
    valid.labels = [relabel[y] for y in valid.labels]
    check_downstream_inputs(valid)
    return train_images(), valid, preset, skipped


def _file_list_digest(job: TrainJob, train_paths: list[Path]) -> str:
    names = sorted(os.fsencode(os.path.relpath(p, job.dataset)).hex() for p in train_paths)
    return f"{len(train_paths)} files, sha256 {hashlib.sha256(chr(10).join(names).encode()).hexdigest()[:16]}"


def fingerprint(job: TrainJob, train_files: str, source: str | None = None) -> dict:
    """What a checkpoint must share with this job to be resumed by it: the dataset, its train images (the file
    list, or the shards' index) and the settings that shape the model. Others (epochs, lr, budgets) may change."""
    s = job.settings
    return {
        "dataset": source or str(job.dataset.resolve()),
        "train_files": train_files,
        "backbone": s.backbone,
        "input_size": s.input_size,
        "stem": "cifar" if s.small_stem else "imagenet",
        "proj_dim": s.proj_dim,
        "pred_hidden_dim": s.pred_hidden_dim,
    }


def check_downstream_inputs(valid: LabelledSplit) -> None:
    """What the downstream phase needs of `valid`, checked before the first training step: the probe's k folds
    and refine's held-out part need 2 images in some class (a class of 1 image stays in the training part)."""
    counts = Counter(valid.labels)
    if max(counts.values()) < 2:
        raise DatasetError(
            f"{valid.root} has only 1 readable image per class; the held-out accuracy needs at least 2 images in "
            "some class (5 or more per class recommended): add labelled images"
        )


def global_rank(s: Settings) -> int:
    """This process's rank before Lightning starts: torchrun/SLURM set RANK/SLURM_PROCID; Lightning's own
    launcher sets NODE_RANK and LOCAL_RANK in the processes it starts."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return int(os.environ.get("NODE_RANK", 0)) * s.devices + int(os.environ.get("LOCAL_RANK", 0))


def _train_and_export(
    job: TrainJob,
    run_dir: RunFolder | None,
    work: Path,
    train_set: PretrainImages | StreamedImages,
    valid: LabelledSplit | None,
    preset: EvalPreset,
    skipped: Skipped,
    t0: float,
    done: list[str] | None = None,
) -> dict:
    pretrained = pretrain(job, work, train_set)
    if done is not None:
        done.append("pretrain")
    if run_dir is None or not pretrained.trainer.is_global_zero:
        return {}  # the refine stage and the export run once, on rank 0 (see README, "DDP")
    assert valid is not None, "rank 0 reads valid"
    train_set.report_skipped(skipped)  # the unreadable train files the loader workers met
    streamed = isinstance(train_set, StreamedImages)
    pretrained.train_images = train_set.images if streamed else len(train_set.kept)
    t_valid = time.monotonic()
    result = downstream(job, pretrained.model.backbone, valid, preset, skipped)
    valid_time = time.monotonic() - t_valid
    checks = export(job, run_dir.path, result, valid, preset)
    return record(job, run_dir, pretrained, result, skipped, valid_time, t0, checks)


@dataclass
class Pretrained:
    model: SimSiam
    trainer: pl.Trainer
    train_time: float  # seconds of pretraining over the whole run, an interrupted run's included (Lightning's Timer)
    images_per_s: float  # over the steps this process made, in this process's time
    steps_here: int  # optimiser steps this process made (global_step minus those restored on resume)
    train_images: int
    resume: Path | None
    precision: str  # what Lightning ran: "bf16-mixed", "16-mixed", "32-true"
    augment_on: str  # where colour, grey and blur ran: "device" or "workers"


class StepsAtStart(pl.Callback):
    """The global step when training starts: after a resume, the steps restored from the checkpoint."""

    step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.step = trainer.global_step


def pretrain(job: TrainJob, work: Path, train_set: PretrainImages | StreamedImages) -> Pretrained:
    """SimSiam on the unlabelled train images (Lightning: checkpoints, CSV log, AMP, DDP)."""
    s = job.settings
    world = s.devices * s.num_nodes
    batch = per_rank_batch(s, len(train_set))
    pin = job.device.type == "cuda"
    streamed = isinstance(train_set, StreamedImages)
    on_device = augments_on_device(s, job.device)
    if streamed:
        loader = stream_loader(train_set, batch, s.num_workers, augment_for(s), on_device, pin_memory=pin)
    else:
        loader = pretrain_loader(train_set, batch, s.num_workers, pin_memory=pin, world=world, seed=s.seed)
    # A folder's loader already holds one rank's share (RankShare); a stream's length is the whole set's.
    steps_per_epoch = len(loader) // world if streamed else len(loader)
    model = SimSiam(s, steps_per_epoch=steps_per_epoch or 1, global_batch=batch * world)
    if job.init is not None and job.resume_from is None:  # a resumed run has its own weights in the checkpoint
        apply_init(job.init, model)
        log.info("pretraining starts from %s %s: %s", job.init.kind, job.init.source, ", ".join(job.init.loaded))
    # Always a Timer (Trainer's max_time adds one only with a budget): it keeps the seconds trained in the
    # checkpoint, so a resumed run's train_time and time-based schedule count the interrupted run's part too.
    timer = Timer(duration=timedelta(seconds=s.time_budget_s) if s.time_budget_s > 0 else None, interval="step")
    at_start = StepsAtStart()
    if s.checkpoint_interval_s > 0:  # long epochs (a streamed dataset): a checkpoint every so many seconds
        checkpoints = ModelCheckpoint(
            dirpath=str(work / "checkpoints"),
            save_top_k=1,
            train_time_interval=timedelta(seconds=s.checkpoint_interval_s),
        )
    else:
        checkpoints = ModelCheckpoint(dirpath=str(work / "checkpoints"), save_top_k=1)
    trainer = pl.Trainer(
        **device_args(s, job.device, job.precision),
        max_epochs=s.epochs,
        logger=CSVLogger(save_dir=str(work), name="logs", version=""),
        # save_top_k=1 without a monitor keeps exactly the newest epoch's checkpoint, written every epoch
        # (save_last alone would only write at the very end, too late to resume an interrupted run).
        callbacks=[
            checkpoints,
            *([StreamState(loader)] if streamed else []),  # the stream's position, for a mid-epoch resume
            # Each refresh reads the logged loss back from the device (a sync): on a GPU, whose steps take
            # milliseconds, a refresh every step would keep the CPU from queueing the next step ahead.
            TQDMProgressBar(refresh_rate=1 if job.device.type == "cpu" else 20),
            timer,
            at_start,
        ],
        log_every_n_steps=max(1, min(50, len(loader))),
        enable_model_summary=False,
        deterministic=False,
    )
    if job.fingerprint is not None:  # beside the checkpoints: resume='last' takes only a run of the same job
        atomic_write_json(work / FINGERPRINT_FILE, job.fingerprint)
    resume = job.resume_from
    if resume:
        log.info("resuming from %s", resume)
    t_train = time.monotonic()
    trainer.fit(model, loader, ckpt_path=str(resume) if resume else None)
    time_here = time.monotonic() - t_train
    if s.checkpoint_interval_s > 0 and trainer.global_step > 0:
        # The interval's last checkpoint may be minutes old: keep the finished state, so that a failure later in
        # the job resumes after pretraining rather than redoing its end.
        trainer.save_checkpoint(work / "checkpoints" / f"epoch={trainer.current_epoch}-step={trainer.global_step}.ckpt")
    if resume and not any((work / "checkpoints").glob("*.ckpt")):
        # A resumed run that made no step (pretraining had finished before the export failed; a spent time budget)
        # writes no checkpoint, and the interrupted folder it came from is removed at commit: the checkpoint it
        # resumed from is this model's, so it goes into the model folder (a later `init` reads it from there).
        (work / "checkpoints").mkdir(parents=True, exist_ok=True)
        shutil.copy2(resume, work / "checkpoints" / Path(resume).name)
    if trainer.global_step == 0:  # Lightning only warns; a random encoder must not be exported as trained
        raise DatasetError(
            f"pretraining made no optimiser step ({len(train_set)} train images, batch {batch} on {world} "
            "process(es)): add train images, or lower batch_size or devices"
        )
    log.info(
        "rank %d: %d of %d train images decoded, %.0f MiB of them cached in shared memory%s",
        trainer.global_rank,
        train_set.pixel_cache.decoded if streamed else train_set.decoded,
        train_set.images if streamed else len(train_set),
        (train_set.pixel_cache if streamed else train_set).cached_bytes / 2**20,
        f" (streamed from {s.train_shards})" if streamed else "",
    )
    steps_here = trainer.global_step - at_start.step
    images_per_s = steps_here * batch * world / max(time_here, 1e-9)
    train_time = timer.time_elapsed("train")
    augment_on = "device" if on_device else "workers"
    log.info(
        "pretraining: %d steps in %.1f s (%.1f images/s, %s, augmentation on the %s)%s",
        steps_here,
        time_here,
        images_per_s,
        trainer.precision,
        augment_on,
        f"; with the resumed run: {trainer.global_step} steps in {train_time:.1f} s" if resume else "",
    )
    return Pretrained(
        model,
        trainer,
        train_time,
        images_per_s,
        steps_here,
        len(train_set),
        resume,
        str(trainer.precision),
        augment_on,
    )


def per_rank_batch(s: Settings, n_images: int) -> int:
    """The per-process batch: at most each rank's share of the train set (DDP splits it, and full batches only
    are drawn), so every rank makes steps; a share under 2 images (BatchNorm) is an error before any training."""
    world = s.devices * s.num_nodes
    share = n_images // world
    if share < 2:
        raise DatasetError(
            f"{n_images} train images over {world} training processes leave {share} per process; BatchNorm needs "
            "at least 2: add train images or use fewer devices"
        )
    return min(s.batch_size, share)


def device_args(s: Settings, device: torch.device, precision: str | None = None) -> dict:
    """The Trainer's accelerator, devices, strategy, SyncBatchNorm and precision (the job's resolved one, or
    resolved here from the settings) for these settings."""
    on_gpu = device.type == "cuda"
    return {
        "accelerator": "gpu" if on_gpu else "cpu",
        "devices": [device.index or 0] if on_gpu and s.devices == 1 else s.devices,
        "num_nodes": s.num_nodes,
        "strategy": s.strategy,
        # Each rank keeps its own share of a folder's images across epochs (RankShare); a stream deals its own.
        "use_distributed_sampler": False,
        # SimSiam's BN statistics must span every GPU process, whatever the strategy is called ("auto" with
        # devices > 1 is DDP too). torch's SyncBatchNorm exists for CUDA only, so CPU (gloo) DDP keeps
        # per-process BN -- fine for tests, not a way to train at scale.
        "sync_batchnorm": on_gpu and s.devices * s.num_nodes > 1,
        "precision": precision or resolve_precision(s.precision, device),
        # Crops have one fixed size: cuDNN may time its convolution algorithms once and keep the fastest.
        "benchmark": on_gpu,
    }


@dataclass
class Downstream:
    encoder: nn.Module  # what is exported: refined, or the frozen pretrained encoder for refine "probe"
    head: nn.Linear
    acc: float  # metric_value: held-out accuracy of the exported model's recipe
    labels: list[int]  # the held-out images' true classes ...
    predictions: list[int]  # ... and the classes the recipe gave them (confusion matrix)
    probe: ProbeResult  # what the frozen features alone are worth (k-fold linear probe, kNN)
    refined: RefineResult | None


def downstream(
    job: TrainJob,
    backbone: nn.Module,
    valid: LabelledSplit,
    preset: EvalPreset,
    skipped: Skipped,
) -> Downstream:
    """The frozen features' linear probe, then (refine "finetune", "auto") LP-FT of encoder + head on valid."""
    s = job.settings
    # Trained channels_last (faster convolutions); exported and served in the default layout.
    encoder = backbone.to(job.device, memory_format=torch.contiguous_format)
    features, kept, bad = run_frozen(encoder, valid.paths, preset, job.device, num_workers=min(2, s.num_workers))
    for i, err in bad:
        skipped.add(str(valid.paths[i]), err)
    labels = [valid.labels[i] for i in kept]
    probe = linear_probe(features, labels, s.cv_folds, s.knn_k)
    log.info(
        "valid: frozen features: linear probe acc %.4f, kNN acc %.4f (%d-fold, %d images, %d classes)",
        probe.acc,
        probe.knn_acc,
        probe.folds,
        len(labels),
        len(valid.classes),
    )
    if s.refine == "probe":
        return Downstream(encoder, probe.head, probe.acc, labels, probe.held_out, probe, None)
    recipe = RefineRecipe(
        epochs=s.refine_epochs,
        batch_size=s.refine_batch_size,
        lr=s.refine_lr,
        head_lr=s.refine_head_lr,
        momentum=s.momentum,
        min_scale=s.min_scale,
        time_budget_s=s.refine_time_budget_s,
        holdout=s.refine_holdout,
        precision=job.precision,
        num_workers=min(2, s.num_workers),
        seed=s.seed,
        choose=s.refine == "auto",
    )
    paths = [valid.paths[i] for i in kept]
    # The probe above keeps the pretrained encoder's features; refine changes a copy (BatchNorm statistics too).
    encoder_copy = copy.deepcopy(encoder)
    n = len(valid.classes)
    r = refine(encoder_copy, paths, labels, n, preset, recipe, job.device, s.cache_mb, skipped)
    log.info(
        "valid: refined (%s, %d epochs): held-out acc %.4f on %d images (linear probe %.4f), %.1f s",
        r.choice["chosen"] if r.choice else "LP-FT",
        r.epochs,
        r.acc,
        len(r.held_out),
        probe.acc,
        r.fit_time_s,
    )
    encoder = r.encoder.to(memory_format=torch.contiguous_format)
    return Downstream(encoder, r.head, r.acc, [labels[i] for i in r.held_out], r.predictions, probe, r)


def export(job: TrainJob, out: Path, result: Downstream, valid: LabelledSplit, preset: EvalPreset) -> dict:
    """The classifier (encoder + head) as TorchScript, torch.export and ONNX, each checked against the model; the
    class names and preset, the .mar, pictures. Returns the formats' largest softmax difference from model.pt."""
    s = job.settings
    checks = export_classifier(result.encoder, result.head, s.input_size, out)
    write_class_names(valid.classes, out / CLASSES_FILE)
    preset.save(out / PRESET_FILE)
    atomic_write_json(out / "settings.json", s.to_dict())
    build_mar(out, job.model_name)
    refine_curve = result.refined.curve if result.refined else []
    plot_training_curves(out / "logs" / "metrics.csv", s.proj_dim, out / "training_curves.png", refine_curve)
    # Which classes the model confuses, from held-out predictions behind metric_value (not the exported model,
    # which has seen every valid image).
    plot_confusion_matrix(
        confusion(result, len(valid.classes)),
        valid.classes,
        result.acc,
        out / "valid_confusion_matrix.png",
        title="Valid confusion matrix, held out",
    )
    return checks


def confusion(result: Downstream, n_classes: int) -> list[list[int]]:
    return confusion_matrix(result.labels, result.predictions, labels=list(range(n_classes))).tolist()


def record(
    job: TrainJob,
    run_dir: RunFolder,
    pretrained: Pretrained,
    result: Downstream,
    skipped: Skipped,
    valid_time: float,
    t0: float,
    checks: dict[str, float],
) -> dict:
    """model_info.json, then the model folder is committed and trial.txt replaced (SPEC: these keys exactly)."""
    s = job.settings
    classes = read_class_names(run_dir.path / CLASSES_FILE)
    trainer = pretrained.trainer
    metrics = {
        "acc": round4(result.acc),
        "refine": s.refine,
        "probe_acc": round4(result.probe.acc),
        "knn_acc": round4(result.probe.knn_acc),
        "cv_folds": result.probe.folds,
        "confusion_matrix": {"labels": classes, "matrix": confusion(result, len(classes))},
    }
    if result.refined is not None:
        metrics["refine_held_out_images"] = len(result.refined.held_out)
        metrics["refine_epochs"] = result.refined.epochs
        metrics["refine_curve"] = result.refined.curve
        if result.refined.choice is not None:
            metrics["refine_choice"] = result.refined.choice
    atomic_write_json(
        run_dir.path / "model_info.json",
        {
            "model_name": job.model_name,
            "mar": f"{job.model_name}.mar",
            # the same classifier in three formats (docs/serving.md, "Without TorchServe"), with their sizes and
            # the largest softmax difference from model.pt measured at export
            "files": {
                name: {"bytes": (run_dir.path / name).stat().st_size, "format": fmt, "max_diff": checks.get(fmt, 0.0)}
                for fmt, name in FORMATS.items()
            }
            | {f"{job.model_name}.mar": {"bytes": (run_dir.path / f"{job.model_name}.mar").stat().st_size}},
            "onnx_opset": onnx_opset(run_dir.path / ONNX_FILE),
            "backbone": s.backbone,
            "input_size": s.input_size,
            "classes": classes,
            "metrics": metrics,
            "pretraining": {
                "steps": trainer.global_step,
                "steps_this_run": pretrained.steps_here,  # differs from steps after a resume
                "epochs": trainer.current_epoch,
                "images_per_s": round(pretrained.images_per_s, 1),
                "train_images": pretrained.train_images,
                "train_source": s.train_shards or str((job.dataset / "train").resolve()),
                "precision": pretrained.precision,
                "device": str(job.device),
                "augment_on": pretrained.augment_on,
            },
            "timing": {"train_time": round4(pretrained.train_time), "valid_time": round4(valid_time)},
            "skipped": [{"path": p, "reason": r} for p, r in skipped.items],
            # what pretraining started from: null for random init; a model folder's metrics as its parent's
            "init": job.init.record() if job.init is not None else None,
        },
    )
    final = run_dir.commit()
    resume = pretrained.resume
    if resume and resume.parent.parent.name.startswith(".interrupted-"):
        shutil.rmtree(resume.parent.parent, ignore_errors=True)  # consumed: the finished model supersedes it
    total = time.monotonic() - t0
    trial = {
        "recom_model": MODEL_NAME,
        "gened_model_name": job.model_name,
        "metric_type": "acc",
        "metric_value": round4(result.acc),
        "used_models": MODEL_NAME,
        "model_path": str(final),
        "model_params": s.to_dict(),
        "eval_result": {MODEL_NAME: {"eval": {"acc": round4(result.acc)}}},
        "predict_prob": {},
        "train_consuming": {
            MODEL_NAME: {
                "total": round4(total),
                "train_time": round4(pretrained.train_time),
                "valid_time": round4(valid_time),
            }
        },
    }
    run_dir.write_trial(trial)
    log.info("trial: %s", json.dumps({k: trial[k] for k in ("metric_value", "model_path")}))
    return trial
