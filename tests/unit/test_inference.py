"""h2s_dist.inference: the one-module hidden two-stream, its fast variants, export and agreement."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from h2s_dist.inference import (FastConfig, HiddenTwoStream, build_fast, export_program, top1_agreement,
                                video_agreement)
from h2s_dist.models import build_vgg16, fuse_scores
from h2s_dist.specs.common import MotionNetSpec
from h2s_dist.train.builders import build_stacked
from h2s_dist.train.scoring import mean_scores
from h2s_dist.train.streams import STREAMS

NUM_CLASSES = 5


def tiny_model(seed: int = 0) -> HiddenTwoStream:
    torch.manual_seed(seed)
    stacked = build_stacked(MotionNetSpec(flavour="tiny"), 11, "tiny", NUM_CLASSES)
    return HiddenTwoStream(build_vgg16("tiny", 3, NUM_CLASSES), stacked).eval()


def clips(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 11, 3, size, size), dtype=torch.uint8, generator=g)


def test_forward_is_what_evaluate_and_predict_compute_chunk_by_chunk():
    """Oracle: the evaluate stage's scoring (stream table inputs, `mean_scores` over chunks of 2)
    and the release fusion of models/fusion.py; one forward over all inputs must give the same."""
    model, x = tiny_model(), clips(5)
    with torch.no_grad():
        spatial, stacked = (mean_scores(net, STREAMS[name].inputs(x), STREAMS[name].to_input,
                                        device=torch.device("cpu"), chunk=2)
                            for name, net in (("spatial", model.spatial), ("stacked", model.stacked)))
        torch.testing.assert_close(model(x), fuse_scores(spatial, stacked, (1.0, 1.5), "release"))


def test_top1_agreement_counts_rows_with_the_same_argmax():
    ref = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1], [0.0, 3.0]])
    cand = torch.tensor([[0.0, 9.0], [0.0, 1.0], [5.0, 0.1], [0.0, 0.1]])  # row 1 flips class
    assert top1_agreement(ref, cand) == 0.75
    assert top1_agreement(ref, ref * 100) == 1.0  # scale-free: a logit tolerance would fail this
    with pytest.raises(ValueError):
        top1_agreement(ref, cand[:2])


def test_video_agreement_of_fast_variants_on_tiny_models():
    model = tiny_model()
    videos = [clips(2, seed=s) for s in range(4)]
    reference = build_fast(model, FastConfig())
    other = tiny_model(seed=1)
    result = video_agreement(reference, {"same": build_fast(model, FastConfig()),
                                         "fast": build_fast(model, FastConfig(channels_last=True, int8_linear=True)),
                                         "other": lambda c: -other(c)}, videos)
    assert result["same"] == 1.0
    assert 0.0 <= result["fast"] <= 1.0 and 0.0 <= result["other"] <= 1.0


def test_channels_last_keeps_the_fp32_scores():
    model, x = tiny_model(), clips()
    torch.testing.assert_close(build_fast(model, FastConfig(channels_last=True))(x), build_fast(model, FastConfig())(x),
                               rtol=1e-4, atol=1e-5)


def test_exported_program_equals_eager_and_loads_without_h2s(tmp_path):
    model, x = tiny_model(), clips(3)
    program = export_program(model, x)
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    other = clips(5, seed=1)  # another number of inputs: N is dynamic
    with torch.no_grad():
        expected = model(other)
        torch.testing.assert_close(program.module()(other), expected)
    torch.save(other, tmp_path / "x.pt")
    code = ("import sys, json, torch; p = torch.export.load(sys.argv[1]); "
            "out = p.module()(torch.load(sys.argv[2])); "
            "print(json.dumps({'scores': out.tolist(), 'h2s': any(m.startswith('h2s_dist') for m in sys.modules)}))")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.pt")], capture_output=True,
                          text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["h2s"]
    torch.testing.assert_close(torch.tensor(result["scores"]), expected)


def test_a_stage_without_both_streams_is_refused_with_what_to_pass():
    from h2s_dist.inference import hidden_two_stream
    from h2s_dist.predict import PredictError, PredictModel

    model = tiny_model()
    only_stacked = PredictModel(stage_uri="/x/finetune-1", kind="finetune_stacked", classes=list("abcde"),
                                frame_size=(32, 32), clip_len_frames=11, crop_size=32, num_windows=1, num_crops=1,
                                networks={"stacked": model.stacked})
    with pytest.raises(PredictError, match="spatial weights.*evaluate stage"):
        hidden_two_stream(only_stacked)


def test_int8_conv_quantises_every_convolution_and_keeps_the_scores_close():
    """The three graphs (MotionNet, both VGG16 feature stacks) hold no float convolution after
    quantise_convolutions; scores calibrated on other clips stay near fp32; the input checks remain."""
    import copy

    from h2s_dist.inference import quantise_convolutions

    model, x = tiny_model(), clips(4, seed=2)
    quantised = copy.deepcopy(model)
    quantise_convolutions([quantised.spatial, quantised.stacked], lambda: quantised(clips(4, seed=3)))
    float_convs = [name for name, m in quantised.named_modules() if type(m) in (torch.nn.Conv2d, torch.nn.ConvTranspose2d)]
    assert float_convs == []
    assert any("quantized" in type(m).__module__ for m in quantised.stacked.motionnet.modules())
    with torch.no_grad():
        reference, scores = model(x), quantised(x)
    assert float((scores - reference).norm() / reference.norm()) < 0.1
    with pytest.raises(ValueError, match="frames"):
        quantised(clips(2)[:, :5])  # MotionNet's own check, in front of the quantised graph


def test_int8_conv_needs_calibration_clips():
    with pytest.raises(ValueError, match="calibration"):
        build_fast(tiny_model(), FastConfig(int8_conv=True))
    scores = build_fast(tiny_model(), FastConfig(int8_conv=True, int8_linear=True), calibration=clips(2, seed=1))(clips())
    assert scores.shape == (NUM_CLASSES,) and scores.dtype == torch.float32
