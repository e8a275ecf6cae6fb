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
