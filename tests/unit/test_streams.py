"""The stream table is the evaluate stage's single source: its fields, its fusions, and a
stream added to it is scored, fused and timed with no other change. Scoring averages
pre-softmax scores the same whatever the chunk, and hands skip records back typed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from h2s_dist.data.skips import Skip
from h2s_dist.specs.evaluate import EvaluateSpec
from h2s_dist.train import streams as S
from h2s_dist.train.scoring import RankScores, mean_scores, score_videos
from h2s_dist.train.stages.evaluate import protocol_fps, stream_scores

SPEC = EvaluateSpec(dataset="file:///d", fusion_weights=(1.0, 1.5), fusion_rule="release")


def _results(scores: dict[str, np.ndarray], labels: list[int]) -> RankScores:
    """{stream: (N, C)} -> a RankScores of videos v0 .. v{N-1}."""
    part = RankScores()
    for i, label in enumerate(labels):
        for stream, array in scores.items():
            part.add(f"v{i}", label, stream, array[i])
    return part


def test_every_stream_is_switched_on_by_evaluate_spec_fields():
    fields = EvaluateSpec.model_fields
    for stream in S.STREAMS.values():
        assert stream.weights in fields and stream.source in S.SOURCES, stream.name
        assert S.SOURCES[stream.source].uri_field in fields, stream.name
    # ...and no weights field on the spec lacks its stream.
    weights_fields = {name for name in fields if name.endswith("_weights") and name != "fusion_weights"}
    assert weights_fields == {stream.weights for stream in S.STREAMS.values()}


def test_fusions_pair_streams_of_the_table():
    assert S.fusions() == {"hidden_two_stream": ("spatial", "stacked"), "two_stream_tvl1": ("spatial", "tvl1")}
    for fused, pair in S.fusions().items():
        assert set(pair) <= set(S.STREAMS) and fused not in S.STREAMS


def test_a_stream_enabled_needs_its_weights_and_its_source():
    assert not S.STREAMS["tvl1"].enabled(SPEC.model_copy(update={"tvl1_weights": "file:///w"}))
    assert S.STREAMS["tvl1"].enabled(SPEC.model_copy(update={"tvl1_weights": "file:///w", "tvl1_flows": "file:///f"}))
    assert S.STREAMS["spatial"].enabled(SPEC.model_copy(update={"spatial_weights": "file:///w"}))


def test_a_stream_added_to_the_table_is_scored_fused_and_timed(monkeypatch):
    extra = S.Stream("extra", "stacked_weights", "frames", S.STREAMS["stacked"].build, lambda c: c, lambda x: x,
                     fusion=S.Fusion("two_stream_extra"))
    monkeypatch.setitem(S.STREAMS, "extra", extra)
    spatial = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    temporal = np.array([[0.0, 1.0], [0.0, 3.0], [4.0, 0.0]], np.float32)
    keys, labels, scores = stream_scores(_results({"spatial": spatial, "extra": temporal}, [0, 1, 0]), SPEC)
    assert keys == ["v0", "v1", "v2"] and labels.tolist() == [0, 1, 0]
    assert list(scores) == ["spatial", "extra", "two_stream_extra", "two_stream_extra_weighted_sum"]
    np.testing.assert_array_equal(scores["extra"], temporal)
    np.testing.assert_allclose(scores["two_stream_extra_weighted_sum"], spatial + 1.5 * temporal)
    fps = protocol_fps(scores, {"decode": 2.0, "spatial": 1.0, "stacked": 0.0, "tvl1": 0.0, "extra": 3.0}, 12)
    assert fps == {"fps/spatial": 12 / 3, "fps/extra": 12 / 5, "fps/two_stream_extra": 12 / 6}


def test_fps_charges_frame_decode_to_each_stream_and_cached_flows_their_own():
    seconds = {"decode": 2.0, "spatial": 1.0, "stacked": 3.0, "tvl1": 4.0}
    scored = dict.fromkeys(["spatial", "stacked", "tvl1", "hidden_two_stream", "two_stream_tvl1"])
    assert protocol_fps(scored, seconds, 12) == {
        "fps/spatial": 12 / 3, "fps/stacked": 12 / 5, "fps/tvl1_cached": 12 / 4, "fps/hidden_two_stream": 12 / 6,
    }
    assert protocol_fps({"stacked": None}, seconds, 12) == {"fps/stacked": 12 / 5}


def test_a_stream_missing_for_some_video_is_left_out():
    part = _results({"spatial": np.eye(2, dtype=np.float32)}, [0, 1])
    part.add("v2", 0, "stacked", np.zeros(2, np.float32))
    part.add("v2", 0, "spatial", np.zeros(2, np.float32))
    _, _, scores = stream_scores(part, SPEC)
    assert list(scores) == ["spatial"]


def test_mean_scores_is_the_mean_over_inputs_whatever_the_chunk():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    inputs = torch.randint(0, 255, (7, 4), dtype=torch.uint8)
    expected = model(inputs.float() / 255).mean(0).detach().numpy()
    for chunk in (1, 3, 7, 50):
        got = mean_scores(model, inputs, lambda x: x.float() / 255, device=torch.device("cpu"), chunk=chunk)
        assert got.dtype == torch.float32 and got.shape == (3,)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


class _Loader:
    """An EvalLoader's surface: items, and skip records filled while iterating."""

    def __init__(self, items, skipped):
        self.items, self.skipped, self._skips = items, [], skipped

    def __iter__(self):
        yield from self.items
        self.skipped.extend(self._skips)


def test_score_videos_returns_scores_skips_and_seconds_typed():
    from h2s_dist.data.eval_stream import EvalItem

    items = [EvalItem(f"v{i}", i, torch.full((2, 3), float(i)), torch.zeros(2, dtype=torch.bool)) for i in range(3)]
    skip = Skip("broken", "shard-000000.tar", "whatever the loader says")
    part = score_videos(_Loader(items, [skip]), {"a": lambda item: item.clips.mean(0), "b": lambda item: item.clips[0]},
                        decode_part="decode")
    assert sorted(part.videos) == ["v0", "v1", "v2"] and part.skipped == [skip]
    assert part.videos["v2"].label == 2 and part.videos["v2"].scores["a"].tolist() == [2.0, 2.0, 2.0]
    assert set(part.seconds) == {"decode", "a", "b"}
    merged = RankScores.merge([part, RankScores(skipped=[skip], seconds={"decode": 1.0})])
    assert merged.skipped == [skip, skip] and merged.seconds["decode"] == pytest.approx(part.seconds["decode"] + 1)
    assert not any(key.startswith("__") for key in merged.videos)
