"""Video-level classification metrics against hand-computed values."""

import numpy as np
import pytest

from h2s_dist import metrics as M


def test_topk_accuracy_counts_labels_among_the_k_best_scores():
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    labels = np.array([0, 2, 0])
    assert M.topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert M.topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    assert M.topk_accuracy(scores, labels, 5) == 1.0  # k beyond the class count = all classes


def test_confusion_rows_are_true_classes_and_per_class_accuracy_is_their_recall():
    matrix = M.confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]
    recall = M.per_class_accuracy(matrix)
    assert recall[:2].tolist() == [0.5, 0.5] and np.isnan(recall[2])


def test_mean_confidence_is_one_over_classes_for_flat_scores_and_near_one_for_peaked():
    assert M.mean_confidence(np.zeros((4, 9))) == pytest.approx(1 / 9)
    peaked = np.array([[20.0, 0.0, 0.0], [0.0, 0.0, 20.0]])
    assert M.mean_confidence(peaked) == pytest.approx(1.0, abs=1e-6)
    assert M.mean_confidence(np.array([[np.log(3.0), 0.0]])) == pytest.approx(0.75)
