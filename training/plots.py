"""Pictures for people: the pretraining loss / collapse-monitor curve."""

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
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for key in series:
                if row.get(key):
                    series[key][int(row["epoch"])] = float(row[key])
    return {k: [v[e] for e in sorted(v)] for k, v in series.items()}


def plot_training_curves(metrics_csv: Path, proj_dim: int, out: Path) -> None:
    m = read_epoch_metrics(metrics_csv)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
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
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
