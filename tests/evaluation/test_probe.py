"""The linear probe: held-out accuracy, and an exported head equal to the fitted probe."""

import numpy as np
import pytest
import torch

from dataset.reader import DatasetError
from evaluation.probe import linear_probe


def _blobs(n_per_class: int, n_classes: int, dim: int = 16, noise: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * 3
    x = torch.cat([centres[c] + noise * torch.randn(n_per_class, dim, generator=g) for c in range(n_classes)])
    y = [c for c in range(n_classes) for _ in range(n_per_class)]
    return x, y


@pytest.mark.parametrize("n_classes", [2, 4])
def test_separable_features_give_high_accuracy_and_an_equivalent_head(n_classes):
    x, y = _blobs(10, n_classes)
    r = linear_probe(x, y, cv_folds=5, knn_k=5)
    assert r.acc > 0.9 and r.knn_acc > 0.9 and r.folds == 5
    assert r.head.out_features == n_classes
    pred = r.head(x).argmax(1).numpy()
    assert (pred == np.array(y)).mean() > 0.95


def test_accuracy_is_held_out_not_on_fitted_images():
    # Random labels on random features: a head can memorise them, but held-out accuracy is ~chance.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 200, generator=g)
    y = [i % 3 for i in range(60)]
    r = linear_probe(x, y, cv_folds=5, knn_k=5)
    fitted_acc = (r.head(x).argmax(1).numpy() == np.array(y)).mean()
    assert fitted_acc == 1.0  # the exported head is fitted on all of valid
    assert r.acc < 0.6  # the reported metric is not
    # The per-image held-out predictions (the model folder's confusion matrix) are what the accuracy counts.
    assert len(r.held_out) == 60 and set(r.held_out) <= {0, 1, 2}
    assert r.acc == np.mean(np.array(r.held_out) == np.array(y))
    assert (np.array(r.held_out) != r.head(x).argmax(1).numpy()).any()


def test_one_image_per_class_is_a_clear_error():
    x, y = _blobs(1, 3)
    with pytest.raises(DatasetError, match="at least 2 images"):
        linear_probe(x, y, cv_folds=5, knn_k=5)


def test_small_classes_use_fewer_folds():
    x, y = _blobs(3, 2)
    assert linear_probe(x, y, cv_folds=5, knn_k=20).folds == 3
