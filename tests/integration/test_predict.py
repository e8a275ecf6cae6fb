"""`h2s predict` on real clips (../shared/data/videos) with tiny random networks saved in the layout a job leaves:
a workspace with a finished evaluate stage (spec.json, outputs.json, _SUCCESS) and a dataset
(classes.json, manifest.parquet). No training: the checks are on the output's form, the flow
video and the error paths, not on the predicted classes."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
import torch

from h2s_dist import cli
from h2s_dist.data.manifest import write_classes, write_manifest
from h2s_dist.data.video import read_video, write_video
from h2s_dist.models import build_vgg16
from h2s_dist.predict import PredictError, load_model, resolve_stage
from h2s_dist.specs.common import MotionNetSpec
from h2s_dist.specs.evaluate import EvaluateSpec
from h2s_dist.train.builders import build_stacked
from h2s_dist.weights import save_state_dict

pytestmark = pytest.mark.integration

CLIPS = ("UCF-101_Rowing_g16_c03.avi", "Ask-Anything__making_cake.mp4", "st-gcn__ta_chi.mp4")
CLASSES = ["rowing", "cake", "tai_chi", "walk", "jump", "wave"]
HEIGHT, WIDTH, CROP, CLIP_LEN = 64, 80, 64, 11


def _manifest_row(i: int) -> dict:
    return {"key": f"v{i}", "shard": "shards/0.tar", "label": i, "class_name": CLASSES[i], "split_1": "test",
            "split_2": "", "split_3": "", "num_frames": 24, "fps": 25.0, "width": WIDTH, "height": HEIGHT,
            "stored_bytes": 0, "source": "", "sha256": "", "encoding": "mp4"}


def _evaluate_stage(root: pathlib.Path, dataset: pathlib.Path, classes: list[str]) -> pathlib.Path:
    """A workspace under root holding one finished evaluate stage of tiny random networks on dataset."""
    torch.manual_seed(0)
    stage = root / "ws" / "evaluate-0123"
    stage.mkdir(parents=True)
    stacked = build_stacked(MotionNetSpec(flavour="tiny"), CLIP_LEN, "tiny", len(classes))
    save_state_dict(stacked.state_dict(), root / "stacked.pt")
    save_state_dict(build_vgg16("tiny", in_channels=3, num_classes=len(classes)).state_dict(), root / "spatial.pt")
    spec = EvaluateSpec(dataset=str(dataset), clip_len_frames=CLIP_LEN, crop_size=CROP, num_windows=3, num_crops=5,
                        motionnet=MotionNetSpec(flavour="tiny"), vgg_flavour="tiny",
                        stacked_weights=str(root / "stacked.pt"), spatial_weights=str(root / "spatial.pt"))
    (stage / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
    (stage / "outputs.json").write_text(json.dumps({"metrics": {}}))
    (stage / "_SUCCESS").write_text(json.dumps({"kind": "evaluate", "stage": "evaluate", "finished_at": "x"}))
    return root / "ws"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> pathlib.Path:
    """A finished evaluate stage whose dataset has classes and a manifest but no shards."""
    root = tmp_path_factory.mktemp("predict")
    dataset = root / "data-0"
    write_classes(str(dataset), CLASSES)
    write_manifest(str(dataset), [_manifest_row(i) for i in range(len(CLASSES))])
    return _evaluate_stage(root, dataset, CLASSES)


@pytest.fixture(scope="module")
def ingested_workspace(tmp_path_factory) -> pathlib.Path:
    """A finished evaluate stage on a small ingested synthetic dataset (training videos to calibrate on)."""
    from h2s_dist.data.ingest import build_listing, ingest
    from h2s_dist.data.manifest import read_classes

    root = tmp_path_factory.mktemp("predict-ingested")
    dataset = root / "data-1"
    listing = build_listing("synthetic", synthetic={"num_videos": 18, "num_frames": 16, "height": HEIGHT,
                                                    "width": WIDTH})
    ingest(listing, str(dataset), size=None, num_tasks=0, progress=False)
    return _evaluate_stage(root, dataset, read_classes(str(dataset)))


def _predict(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_top5_with_probabilities_and_fps_on_real_clips(workspace, shared_data, capsys):
    videos = [str(shared_data / "videos" / name) for name in CLIPS]
    code, out, err = _predict(capsys, *videos, "--model", str(workspace))
    assert code == 0, err
    blocks = out.strip().split("\n" + str(shared_data))
    assert len(blocks) == 3
    for block in blocks:
        probs = [float(p) for p in re.findall(r"^\s+\d\. \S+\s+([0-9.]+)$", block, re.M)]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-3
        assert re.search(r"speed: [0-9.]+ fps", block)
        assert "hidden two-stream" in block and "3 windows x 5 crops" in block


def test_fast_mode_scores_one_window_and_one_crop(workspace, shared_data, capsys):
    video = str(shared_data / "videos" / CLIPS[0])
    code, out, err = _predict(capsys, video, "--model", str(workspace), "--fast", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert "1 windows x 1 crops" in result["method"] and len(result["top"]) == 5 and result["fps"] > 0
    assert sum(p for _, p in result["top"]) <= 1 + 1e-6


def test_flow_video_is_decodable_with_one_frame_per_frame_pair(workspace, shared_data, tmp_path, capsys):
    video = shared_data / "videos" / CLIPS[0]
    out_path = tmp_path / "flow.mp4"
    code, out, err = _predict(capsys, str(video), "--model", str(workspace), "--fast", "--flow-video", str(out_path))
    assert code == 0, err
    frames = read_video(out_path).frames
    num_input = len(read_video(video).frames)
    assert frames.shape == (num_input - 1, HEIGHT, 2 * WIDTH, 3)
    assert f"({num_input - 1} frames" in out


def test_workspace_picks_its_evaluate_stage(workspace):
    assert resolve_stage(str(workspace)) == str(workspace / "evaluate-0123")
    assert resolve_stage(str(workspace / "evaluate-0123")) == str(workspace / "evaluate-0123")
    assert resolve_stage("ws", jobs_root=str(workspace.parent)) == str(workspace / "evaluate-0123")


def test_unknown_model_is_a_user_error(tmp_path, capsys):
    code, _, err = _predict(capsys, "x.mp4", "--model", str(tmp_path / "nothing"))
    assert code == 2 and "not a stage folder" in err


@pytest.mark.parametrize("case", ["missing", "not_a_video", "too_few_frames"])
def test_unreadable_videos_exit_2_naming_the_file(workspace, tmp_path, capsys, case):
    path = tmp_path / f"{case}.mp4"
    if case == "not_a_video":
        path.write_text("hello, I am text")
    elif case == "too_few_frames":
        write_video(path, torch.zeros(4, 64, 80, 3, dtype=torch.uint8).numpy(), 25)
    code, _, err = _predict(capsys, str(path), "--model", str(workspace))
    assert code == 2
    assert str(path) in err
    assert {"missing": "no such file", "not_a_video": "cannot be read as a video",
            "too_few_frames": "4 frames"}[case] in err


def test_one_bad_video_does_not_stop_the_others(workspace, shared_data, tmp_path, capsys):
    good = str(shared_data / "videos" / CLIPS[0])
    code, out, err = _predict(capsys, str(tmp_path / "gone.mp4"), good, "--model", str(workspace), "--fast")
    assert code == 2 and "gone.mp4: no such file" in err and "speed:" in out


def test_spatial_only_model_refuses_a_flow_video(workspace, tmp_path):
    model = load_model(str(workspace))
    del model.networks["stacked"]
    from h2s_dist.predict import write_flow_video

    with pytest.raises(PredictError, match="needs MotionNet"):
        write_flow_video(model, "unused.mp4", tmp_path / "x.mp4")


def test_int8_calibrates_on_training_videos_and_stays_near_fp32(ingested_workspace, shared_data, capsys):
    """--int8 quantises both streams, calibrated on the dataset's training videos; the top-5
    probabilities stay near fp32's (random networks are close to a tie, so the order of near-equal
    classes is not compared)."""
    video = str(shared_data / "videos" / CLIPS[0])
    code, out, err = _predict(capsys, video, "--model", str(ingested_workspace), "--json")
    assert code == 0, err
    reference = dict(json.loads(out)["top"])
    code, out, err = _predict(capsys, video, "--model", str(ingested_workspace), "--json", "--int8")
    assert code == 0, err
    assert re.search(r"int8: .* calibrated on \d+ clips of training videos", err)
    top = dict(json.loads(out)["top"])
    assert max(abs(p - reference.get(name, 0.0)) for name, p in top.items()) < 0.02


def test_int8_without_readable_training_videos_is_a_user_error(workspace, shared_data, capsys):
    code, _, err = _predict(capsys, str(shared_data / "videos" / CLIPS[0]), "--model", str(workspace), "--int8")
    assert code == 2 and "int8 calibrates on the training videos of" in err and "run without --int8" in err
