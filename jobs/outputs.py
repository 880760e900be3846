"""The runs/ folder of SPEC.md: staged model folders and an atomically replaced trial.txt.

A job writes `models/.staging-<uuid>` and renames it to `models/<uuid>` when complete, so trial.txt never points
at a half-written folder. While it runs it holds an flock on `models/.staging-<uuid>.lock`. The kernel drops the
lock when the process dies, however it dies (SIGKILL, the OOM killer), so the next job tells a dead job's
leftovers from a live job's folder and cleans them up (`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
# SIMSIAM_RUNS_DIR moves outputs elsewhere (tests never write into the repository's runs/).
DEFAULT_RUNS = Path(os.environ.get("SIMSIAM_RUNS_DIR", REPO / "runs"))

# Write errors that all mean "no room here": the fix is the same, free space or write elsewhere.
NO_ROOM = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "a file is over the file-size limit (ulimit -f) or what the filesystem allows",
}


class ResumeError(ValueError):
    """`resume` names no checkpoint to continue from; the message says what to pass instead."""


class OutputError(OSError):
    """The runs directory cannot be written; the message names it and the fix."""


def no_room(e: BaseException, runs_dir: Path) -> OutputError | None:
    """`e`, or the error that caused it, as an OutputError naming the folder and the fix when a write failed
    for lack of room (disk full, quota, file-size limit); None for any other error."""
    cause: BaseException | None = e
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in NO_ROOM):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    return OutputError(
        f"cannot write the outputs under {runs_dir}: {NO_ROOM[cause.errno]} ({cause}). Nothing half-written was "
        "left and trial.txt was not changed: free disk space there, or set SIMSIAM_RUNS_DIR "
        "(or --runs_dir) to a folder on a disk with room, and run again"
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + fsync + rename: readers see the old or the new file, and a
    failed write (disk full) leaves neither a half-written file nor the temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power cut
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"  # names stay readable: 花, café
    # A file name that is not UTF-8 reaches us with lone surrogates (os.fsdecode), which UTF-8 cannot encode:
    # write just those as JSON \udcXX escapes; json.loads gives the same str back (os.fsencode: the bytes).
    atomic_write_text(path, text.encode("utf-8", "backslashreplace").decode("utf-8"))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (model.pt, the .mar, the checkpoints, the JSON files, root)."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def round4(x: float) -> float:
    return round(float(x), 4)


class RunFolder:
    """`runs/models/.staging-<uuid>` while the job runs, renamed to `runs/models/<uuid>` when complete.

    A job that dies leaves only dot-entries, never a `<uuid>` folder that trial.txt could point at; the next
    job sweeps them up (`sweep_stale`).
    """

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir.resolve()
        self.id = str(uuid.uuid4())
        models = self.runs_dir / "models"
        self.final = models / self.id
        self.path = models / f".staging-{self.id}"
        self._lock = _lock_file(self.path)
        self._lock_fd: int | None = None
        try:
            models.mkdir(parents=True, exist_ok=True)
            # The lock is taken before the folder exists: a staging folder without a held lock is never live.
            self._lock_fd = _take_lock(self._lock, create=True)
            self.path.mkdir()
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            self.discard()
            raise OutputError(
                f"cannot write to the runs directory {self.runs_dir} ({e.strerror or e}); "
                "free disk space, fix its permissions or set SIMSIAM_RUNS_DIR to a writable folder"
            ) from e
        sweep_stale(models)

    def commit(self) -> Path:
        """Rename the complete folder into place, durably: every file and the folder itself are on disk before the
        rename, and the rename is on disk before trial.txt can point at it (a power cut leaves all or none)."""
        fsync_tree(self.path)
        os.replace(self.path, self.final)
        fsync_dir(self.final.parent)
        self._unlock()
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._unlock()

    def keep_for_resume(self) -> Path | None:
        """After an interruption or a failure after pretraining: keep the checkpoints, and nothing else (a model.pt
        cut short by a full disk, logs), as `.interrupted-<uuid>` (a dot-folder, which trial.txt never points at)
        for `resume: "last"`; without a checkpoint there is nothing worth keeping."""
        if not newest_checkpoint(self.path):
            self.discard()
            return None
        for entry in self.path.iterdir():
            if entry.name in ("checkpoints", FINGERPRINT_FILE):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        kept = self.path.with_name(f".interrupted-{self.id}")
        os.replace(self.path, kept)
        self._unlock()
        return kept

    def write_trial(self, trial: dict[str, Any]) -> Path:
        path = self.runs_dir / "metric" / "trial.txt"
        atomic_write_json(path, trial)
        return path

    def _unlock(self) -> None:
        # Unlink while still holding the lock: a sweeper never sees this file unlocked while the folder exists.
        with contextlib.suppress(OSError):
            self._lock.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock_file(staging: Path) -> Path:
    return staging.with_name(staging.name + ".lock")


def _take_lock(path: Path, create: bool) -> int | None:
    """An fd holding an exclusive flock on `path`, or None when another process holds it. flock (not fcntl
    locks) is per open file, so a second RunFolder in the same process also sees the lock as held."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as e:
        if not create:
            os.close(fd)
            raise
        # No locks on this filesystem (some network mounts): run anyway; leftovers are then not swept.
        log.warning("cannot lock %s (%s): leftovers of killed runs are not cleaned up automatically", path, e)
        return fd
    if create:
        try:
            os.write(fd, f"pid {os.getpid()}\n".encode())  # for people looking at the folder
        except OSError:
            os.close(fd)
            raise
    return fd


def sweep_stale(models: Path) -> None:
    """Clean up the staging folders of jobs that died without unwinding (SIGKILL, the OOM killer, a power cut).

    A staging folder holding a complete checkpoint becomes `.interrupted-<uuid>`, as after Ctrl-C or SIGTERM,
    so `resume: "last"` continues it; one without is removed. Live jobs' folders (lock held) are left alone.
    """
    for lock in models.glob(".staging-*.lock"):
        try:
            fd = _take_lock(lock, create=False)
        except OSError:
            continue  # removed meanwhile by its job or another sweeper, or no locks here: leave it
        if fd is None:
            continue  # a live job
        try:
            _recover(lock.with_name(lock.name.removesuffix(".lock")))
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    for folder in models.glob(".staging-*"):
        # Without a lock file: the job died between unlinking it and renaming (or wrote no lock, an older version).
        if folder.is_dir() and not _lock_file(folder).exists():
            _recover(folder)


def _recover(staging: Path) -> None:
    try:
        checkpoint = newest_checkpoint(staging)
        if checkpoint:
            kept = staging.with_name(".interrupted-" + staging.name.removeprefix(".staging-"))
            os.replace(staging, kept)
            log.warning(
                "a run that was killed left %s; its last checkpoint %s is kept in %s: continue it with "
                "advance_settings resume='last', or delete that folder",
                staging.name,
                checkpoint.name,
                kept,
            )
        else:
            shutil.rmtree(staging)
            log.info("removed %s, left by a run that was killed before its first checkpoint", staging)
    except FileNotFoundError:
        pass  # its job committed it or another job swept it meanwhile
    except OSError as e:
        log.warning("cannot clean up %s, left by a killed run: %s", staging, e)


FINGERPRINT_FILE = "fingerprint.json"


def differences(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """What differs between two run fingerprints, in words: ["backbone: resnet50 here, resnet18 in the checkpoint"]."""
    return [
        f"{k}: {want.get(k)!r} here, {have.get(k)!r} in the checkpoint"
        for k in sorted(set(want) | set(have))
        if want.get(k) != have.get(k)
    ]


def read_fingerprint(run_folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_folder / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return None  # a run of an older version, or one killed before it wrote the file


def find_resume_checkpoint(runs_dir: Path, resume: str, fingerprint: dict[str, Any] | None = None) -> Path | None:
    """`resume`: "" = none; "last" = the newest interrupted run's checkpoint under runs_dir whose fingerprint (the
    dataset, its train files, the settings that shape the model) matches `fingerprint`; else a .ckpt path, refused
    when its run folder's fingerprint differs. Jobs share a runs folder: another job's checkpoint is never taken."""
    if not resume:
        return None
    if resume != "last":
        path = Path(resume).expanduser()
        if not path.is_file():
            raise ResumeError(f"advance_settings resume={resume!r}: no such checkpoint file")
        have = read_fingerprint(path.parent.parent)
        if fingerprint is not None and have is not None and (diff := differences(fingerprint, have)):
            raise ResumeError(
                f"advance_settings resume={resume!r} is a checkpoint of another job: {'; '.join(diff)}. "
                "Run with the same dataset and settings, or drop resume to start afresh"
            )
        return path
    found = sorted(
        ((c, d) for d in (runs_dir / "models").glob(".interrupted-*") if (c := newest_checkpoint(d))),
        key=lambda cd: cd[0].stat().st_mtime,
        reverse=True,
    )
    if not found:
        raise ResumeError(
            f"advance_settings resume='last': no interrupted run under {runs_dir / 'models'}; "
            "drop resume or pass the path of a .ckpt file"
        )
    if fingerprint is None:
        return found[0][0]
    for checkpoint, folder in found:
        if read_fingerprint(folder) == fingerprint:
            return checkpoint
    checkpoint, folder = found[0]
    have = read_fingerprint(folder)
    why = "; ".join(differences(fingerprint, have)) if have is not None else f"{folder} has no {FINGERPRINT_FILE}"
    raise ResumeError(
        f"advance_settings resume='last': none of the {len(found)} interrupted run(s) under {runs_dir / 'models'} "
        f"is this job's (the newest, {folder.name}, differs: {why}); they are left as they are. Run with the same "
        "dataset and settings as the interrupted job, pass a .ckpt path, or drop resume to start afresh"
    )


def newest_checkpoint(run_folder: Path) -> Path | None:
    """The newest complete Lightning checkpoint of a run folder (`checkpoints/epoch=N-step=M.ckpt`), if any.

    A checkpoint is a zip whose directory is written last: a file cut short by a kill has none and is passed
    over (the previous epoch's checkpoint is still there, Lightning removes it only after the next is saved).
    """
    found = [p for p in (run_folder / "checkpoints").glob("*.ckpt") if zipfile.is_zipfile(p)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
