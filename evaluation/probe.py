"""Downstream evaluation on `valid`: a linear probe on frozen features (SimSiam paper, Sec. 4.3).

The reported accuracy is held out: stratified k-fold inside `valid`, each fold's head fitted on the
other folds only. The head that is exported is then fitted on all of `valid` and folded into one
`nn.Linear` (standardisation included), so serving needs no scikit-learn.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from dataset.reader import DatasetError


@dataclass
class ProbeResult:
    acc: float  # held-out linear-probe accuracy (k-fold)
    knn_acc: float  # held-out cosine kNN accuracy (same folds)
    folds: int
    head: nn.Linear  # fitted on all of valid; logits = head(features)
    held_out: list[int]  # each image's class from the fold that did not see it; -1 where no head could be fitted


def make_probe(c: float = 1.0) -> object:
    """The probe: standardised features, multinomial logistic regression (inverse L2 strength C)."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=c))


def _folds(labels: np.ndarray, wanted: int) -> StratifiedKFold:
    counts = np.bincount(labels)
    k = min(wanted, int(counts.max()))
    if k < 2:
        raise DatasetError(
            "valid has only 1 image per class; held-out accuracy needs at least 2 images in some class "
            "(5 or more per class recommended)"
        )
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=0)


def linear_probe(features: torch.Tensor, labels: list[int], cv_folds: int, knn_k: int) -> ProbeResult:
    """features: NxC float; labels: N ints in [0, n_classes)."""
    x = features.double().numpy()
    y = np.asarray(labels)
    n_classes = int(y.max()) + 1
    splitter = _folds(y, cv_folds)
    knn_correct = 0
    held_out = np.full(len(y), -1)
    with warnings.catch_warnings():
        # A class missing from a training fold, or a slow-converging tiny fold, is expected on small valid sets.
        warnings.simplefilter("ignore", (ConvergenceWarning, UserWarning))
        for train_idx, test_idx in splitter.split(x, y):
            if len(np.unique(y[train_idx])) < 2:
                continue  # nothing to fit; those images count as wrong
            clf = make_probe().fit(x[train_idx], y[train_idx])
            held_out[test_idx] = clf.predict(x[test_idx])
            k = min(knn_k, len(train_idx))
            knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
            knn.fit(x[train_idx], y[train_idx])
            knn_correct += int((knn.predict(x[test_idx]) == y[test_idx]).sum())
    head = fit_head(features, labels, n_classes)
    acc = float((held_out == y).mean())
    return ProbeResult(acc, knn_correct / len(y), splitter.get_n_splits(), head, held_out.tolist())


def fit_head(features: torch.Tensor, labels: list[int], n_classes: int, c: float = 1.0) -> nn.Linear:
    """The probe fitted on all of (features NxC, labels), folded into one nn.Linear: logits = head(features).

    Every class in [0, n_classes) must occur in `labels`. Also the head LP-FT starts fine-tuning from
    (training/refine.py)."""
    x = features.double().numpy()
    y = np.asarray(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (ConvergenceWarning, UserWarning))
        final = make_probe(c).fit(x, y)
    head = _fold_into_linear(final, n_classes)
    # The folded head must reproduce scikit-learn's scores exactly (up to float32 rounding).
    ref = final.decision_function(x)
    ref = ref if ref.ndim == 2 else np.stack([-ref, ref], axis=1) / 2
    with torch.no_grad():
        got = head(features.float()).double().numpy()
    assert np.allclose(got - got.mean(1, keepdims=True), ref - ref.mean(1, keepdims=True), atol=1e-3), (
        "folded linear head disagrees with the fitted probe"
    )
    return head


def _fold_into_linear(pipe, n_classes: int) -> nn.Linear:
    """StandardScaler + LogisticRegression -> one nn.Linear: W' = W / sigma, b' = b - W' mu."""
    scaler, clf = pipe[0], pipe[-1]
    w = clf.coef_ / scaler.scale_
    b = clf.intercept_ - w @ scaler.mean_
    if w.shape[0] == 1:  # binary: sklearn keeps one row for class 1; logits (-s/2, s/2) give the same softmax
        w = np.concatenate([-w / 2, w / 2])
        b = np.concatenate([-b / 2, b / 2])
    head = nn.Linear(w.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
        head.bias.copy_(torch.from_numpy(b))
    return head
