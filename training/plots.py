"""Pictures for people: the pretraining loss and collapse monitor, and the refine stage's curves."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt


def read_epoch_metrics(metrics_csv: Path) -> dict[str, list[float]]:
    """Lightning CSVLogger rows -> per-epoch series (train_loss_epoch, z_std, f_erank)."""
    series: dict[str, dict[int, float]] = {"train_loss_epoch": {}, "z_std": {}, "f_erank": {}}
    if not metrics_csv.is_file():  # a run resumed after its pretraining had finished logs no pretraining epoch
        return {k: [] for k in series}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for key in series:
                if row.get(key):
                    series[key][int(row["epoch"])] = float(row[key])
    return {k: [v[e] for e in sorted(v)] for k, v in series.items()}


def plot_training_curves(metrics_csv: Path, proj_dim: int, out: Path, refine_curve: list[dict] | None = None) -> None:
    """Pretraining (loss, collapse monitor, feature rank) and, when the model was fine-tuned, the refine stage
    (loss of both runs, the held-out run's accuracy on the images it never trained on)."""
    m = read_epoch_metrics(metrics_csv)
    panels = 4 if refine_curve else 3
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    ax1, ax2, ax3 = axes[:3]
    epochs = range(1, len(m["train_loss_epoch"]) + 1)
    ax1.plot(epochs, m["train_loss_epoch"], marker="o")
    ax1.set(title="SimSiam loss (-1 = perfect alignment)", xlabel="epoch", ylabel="negative cosine similarity")
    ax2.plot(range(1, len(m["z_std"]) + 1), m["z_std"], marker="o", label="std of l2-normalised z")
    ax2.axhline(1 / math.sqrt(proj_dim), color="green", linestyle="--", label="healthy 1/sqrt(d)")
    ax2.axhline(0, color="red", linestyle=":", label="collapsed")
    ax2.set(title="Collapse monitor", xlabel="epoch")
    ax2.legend()
    ax3.plot(range(1, len(m["f_erank"]) + 1), m["f_erank"], marker="o", color="purple")
    ax3.set(title="Backbone features: effective rank (first batch)", xlabel="epoch", ylim=(0, None))
    if refine_curve:
        ax4 = axes[3]
        for run, colour in (("held-out", "tab:orange"), ("final", "tab:blue")):
            rows = [r for r in refine_curve if r["run"] == run]
            if rows:
                ax4.plot(
                    [r["epoch"] for r in rows], [r["loss"] for r in rows], "-", color=colour, label=f"{run} run: loss"
                )
        held = [r for r in refine_curve if "held_out_acc" in r]
        acc_ax = ax4.twinx()
        acc_ax.plot([r["epoch"] for r in held], [r["held_out_acc"] for r in held], "o--", color="tab:green")
        acc_ax.set(ylabel="held-out accuracy (green)", ylim=(0, 1))
        ax4.set(title="Refine (LP-FT on valid)", xlabel="epoch", ylabel="cross-entropy")
        ax4.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
