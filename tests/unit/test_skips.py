"""The one skip record: its JSON form, its reason text, and the handler that collects it."""

from __future__ import annotations

import json

from h2s_dist.data.skips import Skip, SkipRecorder, count_kinds


def test_skip_round_trips_through_json():
    skip = Skip("v_a", "s3://b/ds/shards/shard-000001.tar", "ClipDecodeError: bad JPEG")
    data = json.loads(json.dumps(skip.to_dict()))
    assert data == {"key": "v_a", "source": "s3://b/ds/shards/shard-000001.tar", "reason": "ClipDecodeError: bad JPEG"}
    assert Skip.from_dict(data) == skip


def test_reason_of_an_exception_names_its_type_and_is_bounded():
    assert Skip.of("k", None, ValueError("no json member")).reason == "ValueError: no json member"
    assert Skip.of("k", None, "too short: 8 frames").reason == "too short: 8 frames"
    assert len(Skip.of("k", None, OSError("x" * 1000)).reason) == 300
    assert count_kinds([Skip.of("a", None, "truncated: at 3"), Skip.of("b", None, "truncated: at 9"),
                        Skip.of("c", None, KeyError("x"))]) == {"truncated": 2, "KeyError": 1}


def test_recorder_as_handler_takes_the_url_from_the_exception_and_drains_new_records():
    recorder = SkipRecorder()
    # webdataset appends the shard URL to the exception's args before calling the handler
    assert recorder(RuntimeError("read failed", "file:///d/shard-000002.tar")) is True  # True: keep going
    [first] = recorder.drain()
    assert (first.key, first.source, first.kind) == (None, "file:///d/shard-000002.tar", "RuntimeError")
    recorder.record("v_b", "u", "sample not found in its shard")
    assert recorder.drain() == [Skip("v_b", "u", "sample not found in its shard")]
    assert recorder.drain() == [] and len(recorder.skipped) == 2
