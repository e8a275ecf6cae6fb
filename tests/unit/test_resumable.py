"""The plan / done record / finish mechanism ingest and tvl1_flows resume with, on a temp folder."""

from __future__ import annotations

import json

import pytest

from h2s_dist.data import manifest
from h2s_dist.data.resumable import ResumableDataset, UnitRecord, gather, plan_fingerprint
from h2s_dist.data.skips import Skip

PLAN = {"version": 1, "units": [["a", "b"], ["c"]]}


def _dataset(root, plan=PLAN) -> ResumableDataset:
    return ResumableDataset(str(root), plan_fingerprint(plan), state_dir="_state", record_prefix="unit", what="units")


def _finish_unit(out: ResumableDataset, index: int, keys: list[str]) -> UnitRecord:
    with open(out.unit_uri(index), "wb") as shard:  # stands in for a written shard
        shard.write(b"tar")
    rows = [{"key": k} for k in keys]
    return out.mark_done(index, UnitRecord(rows, [Skip(f"bad{index}", "src", "truncated: x")], {"pairs": index}))


def test_fingerprint_ignores_key_order():
    assert plan_fingerprint({"a": 1, "b": [1, 2]}) == plan_fingerprint({"b": [1, 2], "a": 1})
    assert plan_fingerprint({"a": 1}) != plan_fingerprint({"a": 2})


def test_done_units_are_those_with_a_record_of_this_plan_and_a_shard(tmp_path):
    out = _dataset(tmp_path)
    out.open_plan(PLAN, remedy="-")
    (tmp_path / "shards").mkdir()
    first = _finish_unit(out, 0, ["a", "b"])
    _finish_unit(out, 1, ["c"])
    (tmp_path / "shards" / "shard-000001.tar").unlink()  # a record without its shard: redo the unit
    assert out.done_records(3) == {0: first}
    saved = json.loads((tmp_path / "_state" / "unit-000000.json").read_text())
    assert saved == {"pairs": 0, "fingerprint": out.fingerprint, "rows": [{"key": "a"}, {"key": "b"}],
                     "skipped": [{"key": "bad0", "source": "src", "reason": "truncated: x"}]}
    assert json.loads((tmp_path / "_state" / "plan.json").read_text()) == {**PLAN, "fingerprint": out.fingerprint}


def test_another_plan_is_refused_unless_starting_over(tmp_path):
    _dataset(tmp_path).open_plan(PLAN, remedy="-")
    (tmp_path / "shards").mkdir()
    _finish_unit(_dataset(tmp_path), 0, ["a"])
    other = _dataset(tmp_path, {"version": 2})
    with pytest.raises(ValueError, match="another plan.*use a new URI"):
        other.open_plan(remedy="use a new URI")
    other.open_plan(resume=False, remedy="-")  # deletes the old records and shards first
    assert other.done_records(2) == {} and not list((tmp_path / "shards").iterdir())


def test_finish_writes_report_manifest_and_classes_or_names_the_report(tmp_path):
    out = _dataset(tmp_path)
    out.open_plan(remedy="-")
    (tmp_path / "shards").mkdir()
    records = {1: _finish_unit(out, 1, ["c"]), 0: _finish_unit(out, 0, ["a", "b"])}
    rows, skipped = gather(records)
    assert [r["key"] for r in rows] == ["a", "b", "c"] and [s.key for s in skipped] == ["bad0", "bad1"]
    row = {"key": "a", "shard": "s", "label": 0, "class_name": "x", "split_1": "train", "split_2": "", "split_3": "",
           "num_frames": 11, "fps": 25.0, "width": 4, "height": 4, "stored_bytes": 1, "source": "f", "sha256": "0",
           "encoding": "jpeg", "source_bytes": 1}
    out.finish([row], skipped, {"n": 1}, report_name="report.json", classes=["x"], nothing_done="nothing")
    assert json.loads((tmp_path / "report.json").read_text()) == {"n": 1}
    assert manifest.read_manifest(str(tmp_path)).num_rows == 1 and manifest.read_classes(str(tmp_path)) == ["x"]
    with pytest.raises(ValueError, match=r"nothing: all 2 were skipped \(\{'truncated': 2\}\).*report.json"):
        out.finish([], skipped, {"n": 0}, report_name="report.json", classes=["x"], nothing_done="nothing")
