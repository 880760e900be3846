"""client_test.py as a user runs it (a subprocess), against the session's tiny trained model.

    .venv/bin/python -m pytest tests/test_client_test.py -q

Outputs go to pytest's tmp folders (SIMSIAM_RUNS_DIR); the repository's runs/ is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The SPEC.md example of trial.txt after a test run: the keys and the value types must match exactly.
SPEC_TRIAL = {
    "model_path": "<absolute path of the new runs/models/<uuid4>>",
    "predict_result_filename": "evaluation_1650953895.json",
    "preview_data": {},
    "test_result": {"SimSiam": {"test": {"acc": 0.6044}}},
    "predict_prob": {},
    "test_consuming": {"SimSiam": {"test": 2.2919}},
}


def run_client_test(
    dataset: Path, model_path: str | Path, used_model: str, runs_dir: Path, timeout: int = 300, device: str = "cpu"
) -> subprocess.CompletedProcess:
    env = {**os.environ, "SIMSIAM_RUNS_DIR": str(runs_dir), "PYTHONIOENCODING": "utf-8"}
    cmd = [sys.executable, str(REPO / "client_test.py"), "--dataset_path", str(dataset), "--model_path"]
    cmd += [str(model_path), "--used_model", used_model, "--device", device]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=timeout)


def read_outputs(runs_dir: Path) -> tuple[dict, dict]:
    trial = json.loads((runs_dir / "metric" / "trial.txt").read_text(encoding="utf-8"))
    evaluation = json.loads((Path(trial["model_path"]) / trial["predict_result_filename"]).read_text(encoding="utf-8"))
    return trial, evaluation


def shape(value):
    """The JSON structure with every leaf replaced by its type."""
    return {k: shape(v) for k, v in value.items()} if isinstance(value, dict) else type(value)


def snapshot(runs_dir: Path) -> tuple[list[str], str | None]:
    """What a failed run must leave unchanged: the model folders (dot-folders too) and trial.txt."""
    models = sorted(p.name for p in (runs_dir / "models").iterdir()) if (runs_dir / "models").is_dir() else []
    trial = runs_dir / "metric" / "trial.txt"
    return models, trial.read_text() if trial.exists() else None


def runs_with_a_trial(trained_model: dict, tmp_path: Path) -> Path:
    """A runs dir that already holds a model folder and a trial.txt, as after client_train.py."""
    runs = tmp_path / "runs"
    (runs / "models" / "earlier").mkdir(parents=True)
    (runs / "metric").mkdir()
    shutil.copy(Path(trained_model["runs_dir"]) / "metric" / "trial.txt", runs / "metric" / "trial.txt")
    return runs


@pytest.fixture(scope="module")
def evaluated(tiny_dataset: Path, trained_model: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    runs = tmp_path_factory.mktemp("test_runs")
    proc = run_client_test(tiny_dataset, trained_model["model_path"], trained_model["gened_model_name"], runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial, evaluation = read_outputs(runs)
    return {"proc": proc, "runs": runs, "trial": trial, "evaluation": evaluation}


def test_trial_matches_spec(evaluated: dict, trained_model: dict) -> None:
    trial, runs = evaluated["trial"], evaluated["runs"]
    assert list(trial) == list(SPEC_TRIAL)
    assert shape(trial) == shape(SPEC_TRIAL)
    folder = Path(trial["model_path"])
    assert folder.is_absolute() and folder.parent == (runs / "models").resolve()
    assert uuid.UUID(folder.name).version == 4 and folder != Path(trained_model["model_path"])
    assert re.fullmatch(r"evaluation_\d+\.json", trial["predict_result_filename"])
    assert {p.name for p in folder.iterdir()} == {trial["predict_result_filename"], "confusion_matrix.png"}
    for number in (trial["test_result"]["SimSiam"]["test"]["acc"], trial["test_consuming"]["SimSiam"]["test"]):
        assert number == round(number, 4) and number >= 0
    assert (folder / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_is_share_of_correct_rows(evaluated: dict, tiny_dataset: Path, trained_model: dict) -> None:
    e, trial = evaluated["evaluation"], evaluated["trial"]
    rows = e["predictions"]
    test_images = sorted(p.relative_to(tiny_dataset / "test" / "images").as_posix() for p in _images(tiny_dataset))
    assert sorted(r["path"] for r in rows) == test_images and e["skipped"] == [] and e["unknown_classes"] == []
    assert all(r["correct"] == (r["true_class"] == r["predicted_class"]) for r in rows)
    assert all(r["true_class"] == r["path"].split("/")[0] and 0 < r["probability"] <= 1 for r in rows)
    share = sum(r["correct"] for r in rows) / len(rows)
    assert e["accuracy"] == round(share, 4) == trial["test_result"]["SimSiam"]["test"]["acc"]
    cm = e["confusion_matrix"]
    assert cm["labels"] == e["classes"] == ["checkers", "dots", "stripes"]
    assert sum(map(sum, cm["matrix"])) == len(rows) and sum(cm["matrix"][i][i] for i in range(3)) == e["correct"]
    assert {c: m["support"] for c, m in e["per_class"].items()} == {"checkers": 3, "dots": 3, "stripes": 3}
    assert e["model_path"] == trained_model["model_path"] and e["used_model"] == trained_model["gened_model_name"]
    out = evaluated["proc"].stdout
    assert f"test accuracy: {e['accuracy']:.4f}" in out and trial["model_path"] in out and "stripes" in out


def test_offline_predictions_match_the_handler(evaluated: dict, trained_model: dict, tmp_path: Path) -> None:
    """The served path: the .mar as TorchServe unpacks it, the handler on the raw bytes of each test file."""
    from ts.torch_handler.unit_tests.test_utils.mock_context import MockContext

    from handler.simsiam_handler import SimSiamHandler

    mar = Path(trained_model["model_path"]) / f"{trained_model['gened_model_name']}.mar"
    with zipfile.ZipFile(mar) as z:
        z.extractall(tmp_path)
    # gpu_id=None: the handler on the CPU, as the offline scores were taken (the gpu tier compares CUDA with CPU,
    # tests/test_gpu.py); MockContext's default puts it on cuda:0 wherever a GPU is present.
    context = MockContext(model_pt_file="model.pt", model_dir=str(tmp_path), model_file=None, gpu_id=None)
    handler = SimSiamHandler()
    handler.initialize(context)
    rows = evaluated["evaluation"]["predictions"]
    root = Path(evaluated["evaluation"]["dataset_path"]) / "test" / "images"
    served = handler.handle([{"data": (root / r["path"]).read_bytes()} for r in rows], context)
    assert len(served) == len(rows)
    for row, answer in zip(rows, served):  # a direct client's answer: the envelope, probability to 4 decimals
        cls, prob = answer["data"][0]["infer_data"]
        assert cls == row["predicted_class"], row["path"]
        assert float(prob) == pytest.approx(row["probability"], abs=5e-5 + 1e-6), row["path"]


def test_unknown_class_and_unreadable_images(tiny_dataset: Path, trained_model: dict, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(tiny_dataset / "test", dataset / "test")
    daisy = dataset / "test" / "images" / "雏菊"
    daisy.mkdir()
    for p in sorted((dataset / "test" / "images" / "dots").iterdir())[:2]:
        shutil.copy(p, daisy / f"雏菊_{p.name}")
    (dataset / "test" / "images" / "dots" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (dataset / "test" / "images" / "stripes" / "empty.png").write_bytes(b"")
    runs = tmp_path / "runs"
    proc = run_client_test(dataset, trained_model["model_path"], trained_model["gened_model_name"], runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, e = read_outputs(runs)
    assert e["unknown_classes"] == ["雏菊"]
    assert "雏菊" in proc.stdout and "雏菊" in proc.stderr
    assert {s["path"] for s in e["skipped"]} == {"dots/broken.jpg", "stripes/empty.png"}
    assert "broken.jpg" in proc.stderr and "empty.png" in proc.stderr
    rows = e["predictions"]
    assert len(rows) == 11 and not any(r["correct"] for r in rows if r["true_class"] == "雏菊")
    assert e["accuracy"] == round(sum(r["correct"] for r in rows) / 11, 4)
    assert e["confusion_matrix"]["labels"] == ["checkers", "dots", "stripes", "雏菊"]
    assert e["per_class"]["雏菊"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


def test_wrong_used_model_names_what_the_folder_holds(tiny_dataset: Path, trained_model: dict, tmp_path: Path) -> None:
    runs = runs_with_a_trial(trained_model, tmp_path)
    before = snapshot(runs)
    proc = run_client_test(tiny_dataset, trained_model["model_path"], "SimSiam_other-trial", runs)
    assert proc.returncode != 0
    assert "SimSiam_other-trial" in proc.stderr and trained_model["gened_model_name"] in proc.stderr
    assert snapshot(runs) == before


@pytest.mark.parametrize("case", ["missing folder", "folder without a model"])
def test_bad_model_path(case: str, tiny_dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "nope"
    if case == "folder without a model":
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("hello")
    proc = run_client_test(tiny_dataset, folder, "SimSiam_tiny", tmp_path / "runs")
    assert proc.returncode != 0
    assert ("is not a folder" if case == "missing folder" else "holds no trained model") in proc.stderr
    assert case == "missing folder" or "notes.txt" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_test_split_without_a_readable_image(trained_model: dict, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    (dataset / "test" / "images" / "dots").mkdir(parents=True)
    (dataset / "test" / "images" / "dots" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    runs = runs_with_a_trial(trained_model, tmp_path)
    before = snapshot(runs)
    proc = run_client_test(dataset, trained_model["model_path"], trained_model["gened_model_name"], runs)
    assert proc.returncode != 0
    assert "no readable image" in proc.stderr and "bad.png" in proc.stderr
    assert snapshot(runs) == before


def _images(dataset: Path) -> list[Path]:
    from dataset.reader import list_images

    return list_images(dataset / "test" / "images")


def test_sigterm_while_scoring_unwinds_and_changes_nothing(
    tiny_dataset: Path, trained_model: dict, tmp_path: Path
) -> None:
    """A platform stopping client_test.py mid-scoring: exit 143 (128 + SIGTERM), no output folder, trial.txt kept.
    The job sends itself SIGTERM as scoring starts (a default SIGTERM would kill it: exit -15)."""
    runs = runs_with_a_trial(trained_model, tmp_path)
    before = snapshot(runs)
    code = (
        "import os, signal, sys; import evaluation.scoring as s; real = s.score\n"
        "def score(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return real(*a, **k)\n"
        "s.score = score; import client_test\n"
        "sys.exit(client_test.main(client_test.get_args_parser().parse_args(sys.argv[1:])))"
    )
    args = ["--dataset_path", str(tiny_dataset), "--model_path", trained_model["model_path"], "--used_model"]
    args += [trained_model["gened_model_name"], "--device", "cpu", "--runs_dir", str(runs)]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "interrupted (SIGTERM): no output folder was committed" in proc.stderr
    assert snapshot(runs) == before
