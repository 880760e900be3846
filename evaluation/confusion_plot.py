"""Confusion-matrix picture (client_test.py on test; client_train.py on valid's held-out folds): rows are true
classes, columns predicted classes."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import font_manager

# DejaVu Sans has no CJK glyphs; class names such as 雏菊 use one of these when it is installed.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei")


def plot_confusion_matrix(
    matrix: list[list[int]],
    labels: list[str],
    accuracy: float,
    out: Path,
    unknown: list[str] = (),
    title: str = "Test confusion matrix",
) -> None:
    """Write a PNG of the KxK count matrix; colour is the row share (recall) so small classes stay visible.

    Classes in `unknown` (test folders the model never saw) are marked, since no prediction can hit them.
    """
    labels = [f"{c} (not in model)" if c in unknown else c for c in labels]
    m = np.asarray(matrix, dtype=int)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    side = min(30.0, max(5.0, 0.45 * n + 3))
    installed = {f.name for f in font_manager.fontManager.ttflist}
    family = ["DejaVu Sans", *(f for f in CJK_FONTS if f in installed)]
    with plt.rc_context({"font.family": family}), warnings.catch_warnings():
        # Without a CJK font such names show as boxes; they are spelled out in the evaluation JSON.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig, ax = plt.subplots(figsize=(side + 1.5, side))
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels)
        if n <= 40:  # beyond that the numbers are unreadable; the JSON has them
            for i in range(n):
                for j in range(n):
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", color=colour, fontsize=8)
        ax.set(xlabel="predicted class", ylabel="true class", title=f"{title} (accuracy {accuracy:.4f})")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
