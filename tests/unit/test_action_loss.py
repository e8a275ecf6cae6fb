"""The classifier stages' action loss, and its label smoothing, against hand numbers."""

import math

import pytest
import torch
from pydantic import ValidationError

from h2s_dist.train.stages.common import action_loss
from h2s_dist.train.stages.spatial import SpatialSpec


def test_label_smoothing_moves_target_mass_evenly_onto_every_class():
    scores, labels = torch.tensor([[10.0, 0.0]]), torch.tensor([0])
    log_p = torch.log_softmax(scores, 1)[0]
    plain, terms = action_loss(scores, labels)
    assert plain.item() == pytest.approx(-log_p[0].item()) and terms["train/top1"] == 1.0
    smoothed, _ = action_loss(scores, labels, label_smoothing=0.2)
    # target (0.9, 0.1): 1 - 0.2 on the label plus 0.2 / 2 on each of the two classes
    assert smoothed.item() == pytest.approx(-(0.9 * log_p[0] + 0.1 * log_p[1]).item())
    assert smoothed.item() > 0.9 > math.log(2) > plain.item()


def test_label_smoothing_must_be_below_one():
    data = {"dataset": "file:///d", "clip_len_frames": 1}
    assert SpatialSpec.model_validate({"data": data, "label_smoothing": 0.2}).label_smoothing == 0.2
    with pytest.raises(ValidationError, match="label_smoothing"):
        SpatialSpec.model_validate({"data": data, "label_smoothing": 1.0})
