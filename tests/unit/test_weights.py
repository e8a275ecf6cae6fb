"""weights: save/load roundtrip and the messages of a model/weights mismatch."""

from __future__ import annotations

import pytest
import torch

from h2s_dist.weights import load_state_dict, load_weights, save_state_dict


def _net(hidden: int = 4, out: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out))


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_saved_weights_load_back_identically(tmp_path, scheme):
    source, target = _net(), torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    uri = f"{scheme}{tmp_path}/w/net.pt"
    save_state_dict(source.state_dict(), uri)
    assert load_weights(target, uri) == []
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
    assert set(load_state_dict(uri)) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_shape_mismatch_names_every_tensor_with_both_shapes_and_loads_nothing(tmp_path):
    uri = str(tmp_path / "net.pt")
    state = _net(hidden=4, out=3).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["2.bias"]
    save_state_dict(state, uri)
    target = _net(hidden=5, out=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_weights(target, uri)
    message = str(info.value)
    assert "0.weight: file (4, 2) vs model (5, 2)" in message
    assert "0.bias: file (4,) vs model (5,)" in message
    assert "2.weight: file (3, 4) vs model (3, 5)" in message
    assert "missing keys (1): 2.bias" in message and "unexpected keys (1): extra.weight" in message
    assert uri in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_non_strict_loads_matching_tensors_and_lists_skipped(tmp_path):
    uri = str(tmp_path / "net.pt")
    source = _net(hidden=4, out=3)
    save_state_dict(source.state_dict(), uri)
    target = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 7))  # new head
    skipped = load_weights(target, uri, strict=False)
    assert skipped == ["2.bias", "2.weight"]
    assert torch.equal(target[0].weight, source[0].weight) and torch.equal(target[0].bias, source[0].bias)
    assert target[2].weight.shape == (7, 4)


def test_load_of_missing_weights_names_the_uri(tmp_path):
    uri = f"file://{tmp_path}/nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_weights(_net(), uri)


def _vgg(num_classes: int, seed: int):
    from h2s_dist.models import build_vgg16

    torch.manual_seed(seed)
    return build_vgg16("tiny", in_channels=20, num_classes=num_classes)


def test_a_classifier_of_another_class_count_is_reinitialised_and_everything_else_loads(tmp_path):
    from h2s_dist.models import VGG16_CLASSIFIER

    uri = str(tmp_path / "ucf101.pt")
    ucf101 = _vgg(101, seed=0)
    save_state_dict(ucf101.state_dict(), uri)
    hmdb51 = _vgg(51, seed=1)
    fresh_fc8 = {name: hmdb51.state_dict()[name].clone() for name in VGG16_CLASSIFIER}
    assert load_weights(hmdb51, uri, new_head=VGG16_CLASSIFIER) == sorted(VGG16_CLASSIFIER)
    for name, value in hmdb51.state_dict().items():
        expected = fresh_fc8[name] if name in VGG16_CLASSIFIER else ucf101.state_dict()[name]
        assert torch.equal(value, expected), name
    assert hmdb51.classifier.fc8.weight.shape == (51, hmdb51.config.fc_channels)


def test_a_classifier_of_the_same_class_count_loads_with_the_rest(tmp_path):
    from h2s_dist.models import VGG16_CLASSIFIER

    uri = str(tmp_path / "ucf101.pt")
    source = _vgg(101, seed=0)
    save_state_dict(source.state_dict(), uri)
    target = _vgg(101, seed=1)
    assert load_weights(target, uri, new_head=VGG16_CLASSIFIER) == []
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())


def test_new_head_forgives_only_the_head_a_mismatch_elsewhere_still_refuses(tmp_path):
    from h2s_dist.models import VGG16_CLASSIFIER, build_vgg16

    uri = str(tmp_path / "rgb.pt")
    save_state_dict(build_vgg16("tiny", in_channels=3, num_classes=101).state_dict(), uri)
    with pytest.raises(ValueError, match=r"features.conv1_1.weight: file \(8, 3, 3, 3\) vs model \(8, 20, 3, 3\)"):
        load_weights(_vgg(51, seed=0), uri, new_head=VGG16_CLASSIFIER)


def test_a_stacked_stream_starts_hmdb51_from_ucf101s_with_a_fresh_fc8(tmp_path):
    from h2s_dist.specs.common import MotionNetSpec
    from h2s_dist.train.builders import STACKED_CLASSIFIER, build_stacked

    tiny, uri = MotionNetSpec(flavour="tiny"), str(tmp_path / "stacked_temporal.pt")
    torch.manual_seed(0)
    ucf101 = build_stacked(tiny, 11, "tiny", num_classes=101)
    save_state_dict(ucf101.state_dict(), uri)
    torch.manual_seed(1)
    hmdb51 = build_stacked(tiny, 11, "tiny", num_classes=51, weights=uri)
    for name, value in hmdb51.state_dict().items():
        if name in STACKED_CLASSIFIER:
            assert value.shape[0] == 51  # fc8 at its init (weights normal(0, 0.001), bias 0)
            if name.endswith("weight"):
                assert not torch.equal(value, ucf101.state_dict()[name][:51])
        else:
            assert torch.equal(value, ucf101.state_dict()[name]), name
