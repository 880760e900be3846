"""Training and test jobs under the faults of a real platform (issue 6): a SIGKILLed job, two jobs at once on
one runs dir, a full disk. Each runs client_train.py / client_test.py as subprocesses on the tiny dataset.

    .venv/bin/pytest tests/test_job_reliability.py -q

The rule checked throughout: trial.txt is absent or points at a complete model folder, and whatever a dead
job left behind is a dot-entry that the next job cleans up (jobs.outputs.sweep_stale).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, TINY_SETTINGS, run_train

# Far more epochs than a test waits for: the run ends by its time budget or by a signal.
ENDLESS = {**TINY_SETTINGS, "epochs": 1000, "batch_size": 8, "proj_dim": 32, "pred_hidden_dim": 8}
# What client_train.py puts in a model folder (README "Outputs"): a folder without them is not complete.
MODEL_FILES = {"model.pt", "index_to_name.json", "preprocess.json", "settings.json", "model_info.json"}


def train_cmd(dataset: Path, trial_name: str, settings: dict) -> list[str]:
    cmd = [sys.executable, str(REPO / "client_train.py"), "--dataset_path", str(dataset), "--device", "cpu"]
    return [*cmd, "--trial_name", trial_name, "--annotation_data", json.dumps({"advance_settings": settings})]


def start_train(dataset: Path, runs: Path, trial_name: str, settings: dict) -> subprocess.Popen:
    """client_train.py as a platform starts it: in the background, outputs under runs (SIMSIAM_RUNS_DIR).

    Its stdout and stderr go to one file beside runs: a pipe that nobody reads while we wait would fill up
    (progress bars) and block the job. `output(proc)` reads it.
    """
    log = runs.parent / f"{trial_name}-{uuid.uuid4().hex[:8]}.log"
    env = {**os.environ, "SIMSIAM_RUNS_DIR": str(runs)}
    with open(log, "w") as f:
        proc = subprocess.Popen(
            train_cmd(dataset, trial_name, settings),
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=f,
            # A shell starts background jobs (`cmd &`) with SIGINT ignored, and an ignored signal stays ignored
            # across exec: Python would then never raise KeyboardInterrupt. Give the job the default, as a
            # terminal or a platform's stop does.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # never leave a training job running after its test
        proc.wait()
        pytest.fail(f"the job did not end within {timeout} s:\n{proc.log.read_text(errors='replace')[-3000:]}")
    return proc.log.read_text(errors="replace")  # type: ignore[attr-defined]


def wait_for(condition: Callable[[], object], proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the job ended (exit {proc.returncode}) first:\n{output(proc)[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting:\n{output(proc)[-3000:]}")
        time.sleep(0.05)


def complete_checkpoints(runs: Path) -> list[Path]:
    # A checkpoint is a zip whose directory comes last: is_zipfile is true only once it is fully written.
    return [p for p in (runs / "models").glob(".staging-*/checkpoints/*.ckpt") if zipfile.is_zipfile(p)]


def assert_complete(folder: Path, trial_name: str) -> None:
    assert {p.name for p in folder.iterdir()} >= MODEL_FILES, sorted(p.name for p in folder.iterdir())
    info = json.loads((folder / "model_info.json").read_text(encoding="utf-8"))
    assert info["model_name"] == f"SimSiam_{trial_name}"
    with zipfile.ZipFile(folder / f"SimSiam_{trial_name}.mar") as z:
        assert z.testzip() is None and "model.pt" in z.namelist()


def staging_folders(runs: Path) -> list[Path]:
    return [p for p in (runs / "models").glob(".staging-*") if p.is_dir()]  # not their .lock files


def dot_entries(runs: Path) -> list[str]:
    return sorted(p.name for p in (runs / "models").iterdir() if p.name.startswith("."))


def with_previous_model(trained_model: dict, runs: Path) -> bytes:
    """A runs dir holding one complete model and a trial.txt pointing at it, as after an earlier run."""
    src = Path(trained_model["model_path"])
    shutil.copytree(src, runs / "models" / src.name)
    trial = {**json.loads((Path(trained_model["runs_dir"]) / "metric" / "trial.txt").read_text())}
    trial["model_path"] = str((runs / "models" / src.name).resolve())
    (runs / "metric").mkdir(parents=True)
    (runs / "metric" / "trial.txt").write_text(json.dumps(trial, indent=2))
    return (runs / "metric" / "trial.txt").read_bytes()


# -- SIGKILL: nothing unwinds, so what is on disk must already be safe --------------------------------------


def test_sigkilled_training_never_moves_trial_txt_and_the_next_run_resumes_its_checkpoint(
    tiny_dataset: Path, trained_model: dict, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    before = with_previous_model(trained_model, runs)
    previous = Path(json.loads(before)["model_path"])

    models = runs.resolve() / "models"

    # Job 1 is killed after its first checkpoint: nothing unwinds, its staging folder and lock file stay.
    job1 = start_train(tiny_dataset, runs, "killed", ENDLESS)
    wait_for(lambda: complete_checkpoints(runs), job1)
    job1.kill()
    assert job1.wait(30) == -signal.SIGKILL
    [staging1] = staging_folders(runs)
    assert (runs / "metric" / "trial.txt").read_bytes() == before  # still the previous, complete model
    assert_complete(previous, "tiny")
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == [previous.name]
    assert dot_entries(runs) == [staging1.name, staging1.name + ".lock"]

    # Job 2 sweeps job 1's leftover as it starts (its checkpoint becomes resumable, as after SIGTERM) and is
    # killed in turn, before a checkpoint of its own.
    interrupted1 = models / staging1.name.replace(".staging-", ".interrupted-")
    job2 = start_train(tiny_dataset, runs, "killed", ENDLESS)
    wait_for(lambda: interrupted1.is_dir() and staging_folders(runs), job2)
    job2.kill()
    err2 = output(job2, 30)
    assert job2.returncode == -signal.SIGKILL
    assert f"a run that was killed left {staging1.name}" in err2 and "resume='last'" in err2
    [staging2] = staging_folders(runs)
    assert not list(staging2.glob("checkpoints/*.ckpt")), "job 2 was meant to die before its first checkpoint"
    assert (runs / "metric" / "trial.txt").read_bytes() == before
    assert dot_entries(runs) == sorted([interrupted1.name, staging2.name, staging2.name + ".lock"])

    # A kill while Lightning copies the next checkpoint in leaves a newer, cut-short file: resume passes it over.
    [good] = interrupted1.glob("checkpoints/*.ckpt")
    partial = good.with_name("epoch=999-step=9999.ckpt")
    partial.write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    # One epoch more than the checkpoint holds (a time budget would already be spent: the resumed run counts
    # the killed run's seconds too).
    done = int(good.name.split("-")[0].removeprefix("epoch="))
    resumed = run_train(tiny_dataset, runs, "killed", {**ENDLESS, "epochs": done + 2, "resume": "last"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed {models / staging2.name}, left by a run that was killed" in resumed.stderr
    assert f"resuming from {interrupted1 / 'checkpoints' / good.name}" in resumed.stderr
    trial = json.loads((runs / "metric" / "trial.txt").read_text())
    assert_complete(Path(trial["model_path"]), "killed")
    info = json.loads((Path(trial["model_path"]) / "model_info.json").read_text())
    assert info["pretraining"]["epochs"] >= done + 1
    assert dot_entries(runs) == []  # swept, and the resumed checkpoint consumed
    assert_complete(previous, "tiny")  # other models are never touched


def test_ctrl_c_keeps_a_resumable_checkpoint_and_trial_txt(
    tiny_dataset: Path, trained_model: dict, tmp_path: Path
) -> None:
    """SIGINT (Ctrl-C) unwinds like SIGTERM (tests/test_client_train.py): the checkpoint is kept, nothing else."""
    runs = tmp_path / "runs"
    before = with_previous_model(trained_model, runs)
    job = start_train(tiny_dataset, runs, "ctrl-c", ENDLESS)
    wait_for(lambda: complete_checkpoints(runs), job)
    job.send_signal(signal.SIGINT)
    err = output(job, 120)
    assert job.returncode == 128 + signal.SIGINT, err[-3000:]  # 130, as a shell reports Ctrl-C
    assert "interrupted (SIGINT)" in err
    assert (runs / "metric" / "trial.txt").read_bytes() == before
    [kept] = dot_entries(runs)
    assert kept.startswith(".interrupted-") and f"kept in {runs.resolve() / 'models' / kept}" in err
    assert list((runs / "models" / kept / "checkpoints").glob("*.ckpt"))


def test_a_live_jobs_staging_folder_is_never_swept_and_a_dead_ones_is(tmp_path: Path) -> None:
    """The sweep in-process and across processes, without training: a RunFolder is only a folder and a lock."""
    from jobs.outputs import RunFolder

    live = RunFolder(tmp_path)  # this process holds its lock
    (live.path / "checkpoints").mkdir()
    dead_code = "import os, sys; from pathlib import Path; from jobs.outputs import RunFolder; "
    dead_code += "r = RunFolder(Path(sys.argv[1])); "
    dead_code += "print(r.path, flush=True); os.kill(os.getpid(), 9)"
    dead = subprocess.run(
        [sys.executable, "-c", dead_code, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert dead.returncode == -signal.SIGKILL, dead.stderr
    dead_path = Path(dead.stdout.strip())
    assert dead_path.is_dir() and live.path.is_dir()  # the dead job's sweep left this process's folder alone

    again = RunFolder(tmp_path)  # a second job in the same process: flock is per open file, so `live` is held
    assert live.path.is_dir() and not dead_path.exists() and not Path(f"{dead_path}.lock").exists()
    final = live.commit()
    again.discard()
    assert dot_entries(tmp_path) == [] and [p.name for p in (tmp_path / "models").iterdir()] == [final.name]


# -- Two jobs at once -------------------------------------------------------------------------------------------


def test_two_training_jobs_at_once_on_one_runs_dir(tiny_dataset: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # Job a trains for a fixed budget so that job b's whole start (and its sweep) happens while a runs.
    a = start_train(tiny_dataset, runs, "job-a", {**ENDLESS, "time_budget_s": 12})
    wait_for(lambda: staging_folders(runs), a)
    b = start_train(tiny_dataset, runs, "job-b", TINY_SETTINGS)
    both_staging = False
    trial_file = runs / "metric" / "trial.txt"
    deadline = time.monotonic() + 300
    while (a.poll() is None or b.poll() is None) and time.monotonic() < deadline:
        both_staging |= len(staging_folders(runs)) == 2
        try:
            text = trial_file.read_text()
        except FileNotFoundError:
            pass
        else:
            json.loads(text)  # once the first job is done: never a half-written file, it is replaced by rename
        time.sleep(0.02)
    out_a, out_b = output(a, 1), output(b, 1)
    assert a.returncode == 0, out_a[-3000:]
    assert b.returncode == 0, out_b[-3000:]
    assert both_staging, "the two jobs never ran at the same time"

    folders = {}
    for name, out in (("job-a", out_a), ("job-b", out_b)):
        [line] = [ln for ln in out.splitlines() if ln.startswith("model folder:")]
        folders[name] = Path(line.split(":", 1)[1].strip())
        assert_complete(folders[name], name)
    assert folders["job-a"] != folders["job-b"]
    assert sorted(p.name for p in (runs / "models").iterdir()) == sorted(f.name for f in folders.values())
    assert [p.name for p in (runs / "metric").iterdir()] == ["trial.txt"]  # no temp files left
    trial = json.loads(trial_file.read_text())
    winner = trial["gened_model_name"].removeprefix("SimSiam_")
    assert Path(trial["model_path"]) == folders[winner]  # one job's trial.txt, whole, never a mix of the two


# -- A full disk ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """`mount(size_bytes)` -> a fresh tmpfs of that size; skipped where the container may not mount."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / f"disk-{len(mounted)}"
        point.mkdir()
        size = (size + 4095) // 4096 * 4096
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill up here ({proc.stderr.strip() or proc.returncode})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def assert_clear_disk_error(proc: subprocess.CompletedProcess, runs: Path, what: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]  # not 1 (a traceback) and not -6 (torch aborting)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"cannot write the outputs under {runs.resolve()}: {what}" in proc.stderr
    assert "free disk space" in proc.stderr and "SIMSIAM_RUNS_DIR" in proc.stderr


def test_disk_full_at_the_first_checkpoint(tiny_dataset: Path, trained_model: dict, small_disk) -> None:
    runs = small_disk(2 * 2**20)  # room for logs and trial.txt, not for a checkpoint
    before = with_previous_model_on(trained_model, runs)
    proc = run_train(tiny_dataset, runs, "full", TINY_SETTINGS)
    assert_clear_disk_error(proc, runs, "the disk is full")
    assert "No space left on device" in proc.stderr
    assert (runs / "metric" / "trial.txt").read_bytes() == before
    assert dot_entries(runs) == [] and [p.name for p in (runs / "metric").iterdir()] == ["trial.txt"]


def test_disk_full_while_exporting_the_model(tiny_dataset: Path, trained_model: dict, small_disk) -> None:
    """Room for the checkpoint but not for model.pt beside it: torch's own file writer would abort the process."""
    model = Path(trained_model["model_path"])
    [checkpoint] = model.glob("checkpoints/*.ckpt")
    runs = small_disk(checkpoint.stat().st_size + (model / "model.pt").stat().st_size // 2)
    proc = run_train(tiny_dataset, runs, "full", TINY_SETTINGS)
    assert_clear_disk_error(proc, runs, "the disk is full")
    assert "pretraining:" in proc.stderr  # it failed after training, in the export
    assert not (runs / "metric").exists() or list((runs / "metric").iterdir()) == []
    # The finished pretraining is kept (issue 16): only its checkpoint, in a folder trial.txt never points at.
    [kept] = (runs / "models").iterdir()
    assert kept.name.startswith(".interrupted-") and "resume='last'" in proc.stderr
    # Only its checkpoint and the fingerprint that lets resume='last' know it as this job's.
    assert sorted(p.relative_to(kept).parts[0] for p in kept.rglob("*") if p.is_file()) == [
        "checkpoints",
        "fingerprint.json",
    ]


def with_previous_model_on(trained_model: dict, runs: Path) -> bytes:
    """A previous trial.txt only (a whole model folder would not fit on a tiny disk)."""
    (runs / "metric").mkdir()
    (runs / "metric" / "trial.txt").write_text((Path(trained_model["runs_dir"]) / "metric" / "trial.txt").read_text())
    return (runs / "metric" / "trial.txt").read_bytes()


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # Python ignores SIGXFSZ at start-up anyway; say so here: a write over the limit then fails with EFBIG.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_file_size_limit_during_training_is_a_clear_error(
    tiny_dataset: Path, trained_model: dict, tmp_path: Path
) -> None:
    """Where no tmpfs can be mounted, RLIMIT_FSIZE fails the same writes (EFBIG); checkpoints are the big files."""
    runs = tmp_path / "runs"
    before = with_previous_model(trained_model, runs)
    env = {**os.environ, "SIMSIAM_RUNS_DIR": str(runs)}
    cmd = train_cmd(tiny_dataset, "limited", TINY_SETTINGS)
    # 4 MiB: the logs fit, a checkpoint does not.
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(4 * 2**20)
    )
    assert_clear_disk_error(proc, runs, "a file is over the file-size limit")
    assert "File too large" in proc.stderr
    assert (runs / "metric" / "trial.txt").read_bytes() == before
    assert dot_entries(runs) == [] and len(list((runs / "models").iterdir())) == 1  # only the previous model


def test_file_size_limit_in_client_test_is_a_clear_error(tiny_dataset: Path, trained_model: dict, tmp_path: Path):
    runs = tmp_path / "runs"
    before = with_previous_model(trained_model, runs)
    env = {**os.environ, "SIMSIAM_RUNS_DIR": str(runs), "PYTHONIOENCODING": "utf-8"}
    cmd = [sys.executable, str(REPO / "client_test.py"), "--dataset_path", str(tiny_dataset), "--device", "cpu"]
    cmd += ["--model_path", trained_model["model_path"], "--used_model", trained_model["gened_model_name"]]
    # 2 KiB: the lock and the write probe fit, the confusion-matrix PNG and evaluation JSON do not.
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(2048)
    )
    assert_clear_disk_error(proc, runs, "a file is over the file-size limit")
    assert (runs / "metric" / "trial.txt").read_bytes() == before
    assert dot_entries(runs) == [] and len(list((runs / "models").iterdir())) == 1


def test_a_committed_model_folder_is_on_disk_before_it_is_renamed(tmp_path, monkeypatch) -> None:
    """A power cut leaves the whole folder or none: every file (model.pt, the .mar, the JSON files) and the
    folder are fsynced before the rename, and the parent folder after it."""
    from jobs.outputs import RunFolder

    folder = RunFolder(tmp_path / "runs")
    for name in ("model.pt", "SimSiam_x.mar", "model_info.json", "settings.json"):
        (folder.path / name).write_bytes(b"x" * 100)
    (folder.path / "checkpoints").mkdir()
    (folder.path / "checkpoints" / "a.ckpt").write_bytes(b"y")
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    final = folder.commit()
    staging = str(folder.path)
    files = {f"{staging}/{n}" for n in ("model.pt", "SimSiam_x.mar", "model_info.json", "settings.json")}
    assert files | {f"{staging}/checkpoints/a.ckpt", staging} <= set(synced[:-1])
    assert synced[-1] == str(final.parent)  # the rename itself, last
