"""The runs/ folder of SPEC.md: staged model folders and an atomically replaced trial.txt."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# SIMSIAM_RUNS_DIR moves outputs elsewhere (tests never write into the repository's runs/).
DEFAULT_RUNS = Path(os.environ.get("SIMSIAM_RUNS_DIR", REPO / "runs"))


class OutputError(OSError):
    """The runs directory cannot be written; the message names it and the fix."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + fsync + rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def round4(x: float) -> float:
    return round(float(x), 4)


class RunFolder:
    """`runs/models/.staging-<uuid>` while the job runs, renamed to `runs/models/<uuid>` when complete.

    A job that dies leaves only a dot-folder, never a `<uuid>` folder that trial.txt could point at.
    """

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir.resolve()
        self.id = str(uuid.uuid4())
        self.final = self.runs_dir / "models" / self.id
        self.path = self.runs_dir / "models" / f".staging-{self.id}"
        try:
            self.path.mkdir(parents=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise OutputError(
                f"cannot write to the runs directory {self.runs_dir} ({e.strerror or e}); "
                "free disk space, fix its permissions or set SIMSIAM_RUNS_DIR to a writable folder"
            ) from e

    def commit(self) -> Path:
        os.replace(self.path, self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def keep_for_resume(self) -> Path | None:
        """After an interruption: keep the last checkpoint as `.interrupted-<uuid>` (a dot-folder, which trial.txt
        never points at) for `resume: "last"`; without a checkpoint there is nothing worth keeping."""
        if not newest_checkpoint(self.path):
            self.discard()
            return None
        kept = self.path.with_name(f".interrupted-{self.id}")
        os.replace(self.path, kept)
        return kept

    def write_trial(self, trial: dict[str, Any]) -> Path:
        path = self.runs_dir / "metric" / "trial.txt"
        atomic_write_json(path, trial)
        return path


def find_resume_checkpoint(runs_dir: Path, resume: str) -> Path | None:
    """`resume`: "" = none; "last" = the newest interrupted run's checkpoint under runs_dir; else a .ckpt path."""
    if not resume:
        return None
    if resume != "last":
        path = Path(resume).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"advance_settings resume={resume!r}: no such checkpoint file")
        return path
    found = [c for d in (runs_dir / "models").glob(".interrupted-*") if (c := newest_checkpoint(d))]
    if not found:
        raise FileNotFoundError(
            f"advance_settings resume='last': no interrupted run under {runs_dir / 'models'}; "
            "drop resume or pass the path of a .ckpt file"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def newest_checkpoint(run_folder: Path) -> Path | None:
    """The newest Lightning checkpoint of a run folder (`checkpoints/epoch=N-step=M.ckpt`), if any."""
    found = list((run_folder / "checkpoints").glob("*.ckpt"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
