"""Classification metrics on video-level scores (numpy only)."""

from __future__ import annotations

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the k highest scores. scores (N, C), labels (N,)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def mean_confidence(scores: np.ndarray) -> float:
    """Mean over rows of the largest softmax probability of pre-softmax scores (N, C): 1/C
    for a stream that knows nothing and says so; near 1 for a confident one. A stream at
    chance accuracy with high confidence drags late fusion down."""
    if len(scores) == 0:
        return float("nan")
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return float((shifted.max(axis=1) / shifted.sum(axis=1)).mean())


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts; row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix (nan for classes with no videos)."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def confusion_figure(matrix: np.ndarray, class_names: list[str], title: str):
    """A matplotlib figure of the row-normalised confusion matrix (labels on both axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    side = min(max(4.0, 0.25 * n + 2), 30.0)
    fig, ax = plt.subplots(figsize=(side, side))
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(n)
    fontsize = max(4, min(10, 400 // max(n, 1)))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if normalised[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig
