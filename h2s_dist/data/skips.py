"""The one record of a skipped sample, and the handler that collects them.

Every place that skips something instead of failing (ingest skips a bad source video, the
readers skip a corrupt sample or an unreadable shard, tvl1_flows skips a video it cannot
decode) writes the same record, in memory as `Skip` and in JSON files as its `to_dict()`:

    {"key": "v_ApplyEyeMakeup_g01_c01", "source": "s3://b/ucf101/shards/shard-000003.tar",
     "reason": "ClipDecodeError: JPEG 4 of 16 is corrupt"}

    recorder = SkipRecorder()                      # a webdataset handler= as well
    recorder.record("v_x", shard_uri, exn)         # warns, keeps the record
    json.dumps([s.to_dict() for s in recorder.skipped])
    Skip.from_dict(json.loads(text)[0])

Files holding these records: ingest_report.json and _ingest/shard-NNNNNN.json (ingest),
flows_report.json and _flows/chunk-NNNNNN.json (tvl1_flows), evaluation.json (evaluate),
skipped.json (the MLflow artifact of every training stage).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class Skip:
    """One sample that was left out, and why."""

    key: str | None
    """The sample's key (video key); None when a whole shard or file could not be read."""
    source: str | None
    """Where it was read from: the shard URI (readers) or the source video file (ingest)."""
    reason: str
    """What went wrong, "<kind>: <detail>", e.g. "truncated: ..." or "ClipDecodeError: ..."."""

    @classmethod
    def of(cls, key: str | None, source: str | None, exn: BaseException | str) -> Skip:
        """A record whose reason is `exn` itself (a string) or "<exception type>: <message>"."""
        reason = exn if isinstance(exn, str) else f"{type(exn).__name__}: {exn}"
        return cls(key, source, reason[:MAX_REASON_CHARS])

    @property
    def kind(self) -> str:
        """The reason without its detail (the part before the first colon)."""
        return self.reason.split(":", 1)[0]

    def to_dict(self) -> dict[str, str | None]:
        return {"key": self.key, "source": self.source, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Skip:
        return cls(data["key"], data["source"], data["reason"])


def count_kinds(skips: Iterable[Skip]) -> collections.Counter:
    """{reason kind: number of skips}, for one-line summaries."""
    return collections.Counter(s.kind for s in skips)


class SkipRecorder:
    """Warn, remember, keep going: `record()` for skips found by the caller, and a webdataset
    `handler=` (a tar-level error becomes a record with the shard URI as its source).
    `drain()` hands the records added since the last drain to whoever forwards them out of
    a DataLoader worker."""

    def __init__(self) -> None:
        self.skipped: list[Skip] = []
        self._sent = 0

    def __call__(self, exn: BaseException) -> bool:
        url = next((a for a in getattr(exn, "args", ())[1:] if isinstance(a, str)), None)
        self.record(None, url, exn)
        return True

    def record(self, key: str | None, source: str | None, exn: BaseException | str) -> Skip:
        skip = Skip.of(key, source, exn)
        self.skipped.append(skip)
        log.warning("skipping sample %s in %s: %s", key, source, skip.reason)
        return skip

    def drain(self) -> list[Skip]:
        new = self.skipped[self._sent :]
        self._sent = len(self.skipped)
        return new
