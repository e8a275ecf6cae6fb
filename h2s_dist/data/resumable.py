"""A dataset written unit by unit under a plan, so that a rerun finishes what a crash left:
the mechanism shared by ingest (a unit is one frame shard) and the tvl1_flows stage (a
unit is one chunk of videos, written as one flow shard).

    out = ResumableDataset(output_uri, plan_fingerprint(plan), state_dir="_ingest",
                           record_prefix="shard", what="an ingest")
    out.open_plan(plan, resume=True, remedy="use a new --output")   # refuses another plan here
    records = out.done_records(num_units)          # {index: UnitRecord} an earlier run finished
    for i in todo:                                 # write out.unit_uri(i) atomically, then:
        records[i] = out.mark_done(i, UnitRecord(rows, skipped, extra))
    rows, skipped = gather(records)
    out.finish(rows, skipped, report, report_name="ingest_report.json", classes=classes,
               nothing_done="no video could be ingested")

Layout under output_uri (docs/data.md):
  <state_dir>/plan.json               {"fingerprint", ...the plan when given}
  <state_dir>/<prefix>-NNNNNN.json    unit NNNNNN's done record: {"fingerprint", "rows",
                                      "skipped": [Skip.to_dict()], ...extra}
  shards/shard-NNNNNN.tar             unit NNNNNN's shard
  <report_name>, manifest.parquet, classes.json   written by `finish` from the done records
A unit is done when its record carries this plan's fingerprint and its shard exists; the
record is written after the shard, so a crash between the two redoes the unit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from h2s_dist.data import manifest, storage
from h2s_dist.data.skips import Skip, count_kinds


def plan_fingerprint(plan: Any) -> str:
    """sha256 (hex) of a plain-data plan in canonical JSON (key order does not matter)."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


@dataclass
class UnitRecord:
    """What one finished unit contributes to the dataset."""

    rows: list[dict[str, Any]]
    """Manifest rows of the videos in the unit's shard, in shard order."""
    skipped: list[Skip]
    """Videos of the unit that were left out, with their reasons."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Numbers the writer keeps per unit (ingest: the shard URI; tvl1_flows: pairs, seconds, bytes)."""

    def to_dict(self, fingerprint: str) -> dict[str, Any]:
        return {**self.extra, "fingerprint": fingerprint, "rows": self.rows,
                "skipped": [s.to_dict() for s in self.skipped]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitRecord:
        extra = {k: v for k, v in data.items() if k not in ("fingerprint", "rows", "skipped")}
        return cls(list(data["rows"]), [Skip.from_dict(s) for s in data["skipped"]], extra)


def gather(records: Mapping[int, UnitRecord]) -> tuple[list[dict[str, Any]], list[Skip]]:
    """(every row, every skip) of the records, in unit order."""
    ordered = [records[i] for i in sorted(records)]
    return [row for r in ordered for row in r.rows], [s for r in ordered for s in r.skipped]


class ResumableDataset:
    """The plan, done records and finish of one dataset at `output_uri` (see the module doc)."""

    def __init__(self, output_uri: str, fingerprint: str, *, state_dir: str, record_prefix: str, what: str) -> None:
        self.output_uri, self.fingerprint = output_uri, fingerprint
        self.state_dir, self.record_prefix, self.what = state_dir, record_prefix, what

    def unit_name(self, index: int) -> str:
        """Unit `index`'s shard relative to the dataset URI, as the manifest names it."""
        return f"{manifest.SHARDS_DIR}/{shard_name(index)}"

    def unit_uri(self, index: int) -> str:
        """Where unit `index`'s shard goes."""
        return storage.join(self.output_uri, self.unit_name(index))

    def record_uri(self, index: int) -> str:
        return storage.join(self.output_uri, self.state_dir, f"{self.record_prefix}-{index:06d}.json")

    @property
    def plan_uri(self) -> str:
        return storage.join(self.output_uri, self.state_dir, "plan.json")

    def open_plan(self, plan: Mapping[str, Any] | None = None, *, resume: bool = True, remedy: str) -> None:
        """Continue the plan found at the URI, or start this one there.

        resume: a plan already there must have this fingerprint (ValueError naming `remedy`
        otherwise). resume False: earlier done records and shards are deleted first, so none
        is mistaken for this plan's. `plan` is saved beside the fingerprint when given.
        """
        if resume and storage.exists(self.plan_uri):
            found = str(json.loads(storage.read_bytes(self.plan_uri)).get("fingerprint"))
            if found != self.fingerprint:
                raise ValueError(
                    f"{self.output_uri} holds {self.what} of another plan (other inputs or settings: "
                    f"{found[:12]} != {self.fingerprint[:12]}); {remedy}"
                )
            return
        if not resume:
            for sub in (self.state_dir, "shards"):
                for uri in storage.list_uris(storage.join(self.output_uri, sub)):
                    storage.delete(uri)
        storage.write_bytes(self.plan_uri, json.dumps({**(plan or {}), "fingerprint": self.fingerprint}).encode())

    def done_record(self, index: int) -> UnitRecord | None:
        """Unit `index`'s record when an earlier run of this plan finished it, else None."""
        uri = self.record_uri(index)
        if not storage.exists(uri) or not storage.exists(self.unit_uri(index)):
            return None
        data = json.loads(storage.read_bytes(uri))
        return UnitRecord.from_dict(data) if data.get("fingerprint") == self.fingerprint else None

    def done_records(self, num_units: int) -> dict[int, UnitRecord]:
        """done_record of every unit, from two listings (not two requests per unit: an ingest
        of a million videos has thousands of shards in an object store)."""
        records = set(storage.list_uris(storage.join(self.output_uri, self.state_dir), suffix=".json"))
        shards = set(storage.list_uris(storage.join(self.output_uri, manifest.SHARDS_DIR)))
        found = {}
        for i in range(num_units):
            if self.record_uri(i) in records and self.unit_uri(i) in shards:
                data = json.loads(storage.read_bytes(self.record_uri(i)))
                if data.get("fingerprint") == self.fingerprint:
                    found[i] = UnitRecord.from_dict(data)
        return found

    def mark_done(self, index: int, record: UnitRecord) -> UnitRecord:
        """Write unit `index`'s done record (its shard must be written already)."""
        storage.write_bytes(self.record_uri(index), json.dumps(record.to_dict(self.fingerprint)).encode())
        return record

    def finish(self, rows: list[dict[str, Any]], skipped: Iterable[Skip], report: Mapping[str, Any], *,
               report_name: str, classes: list[str], nothing_done: str) -> None:
        """Write the report (always), then the manifest and classes.json; a ValueError that
        starts with `nothing_done` and names the report when no unit holds a row."""
        report_uri = storage.join(self.output_uri, report_name)
        storage.write_bytes(report_uri, json.dumps(report, indent=1).encode())
        if not rows:
            skipped = list(skipped)
            raise ValueError(
                f"{nothing_done}: all {len(skipped)} were skipped ({dict(count_kinds(skipped))}); "
                f"see {report_uri} for each one's reason"
            )
        manifest.write_manifest(self.output_uri, rows)
        manifest.write_classes(self.output_uri, classes)
