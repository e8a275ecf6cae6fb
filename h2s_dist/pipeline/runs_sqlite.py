"""Read job runs straight from an MLflow sqlite store, read-only, without importing mlflow.

MLflow's tables (experiments, runs, tags, latest_metrics) are read with the stdlib sqlite3;
the queries answer what MlflowClient's searches answer for `h2s runs` (see run_rows):
deleted runs and experiments are skipped, runs are ordered by start time (missing ones
last), then by run id. The database is opened with `mode=ro`: listing never creates,
migrates or locks a store for writing. `SqliteRuns.readable` says whether a store has the
tables and columns read here; for one that does not (a newer or half-created schema) use
run_rows.ClientRuns.
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
from collections.abc import Iterator, Sequence

from h2s_dist.pipeline.run_rows import SEARCH_MAX_RESULTS, RunRow

# Table -> columns read here; all present in MLflow's sqlite schema since MLflow 1.x.
_COLUMNS = {
    "experiments": {"experiment_id", "name", "lifecycle_stage"},
    "runs": {"run_uuid", "name", "experiment_id", "status", "start_time", "lifecycle_stage"},
    "tags": {"key", "value", "run_uuid"},
    "latest_metrics": {"key", "value", "is_nan", "run_uuid"},
}
_SELECT_RUNS = (
    "SELECT r.run_uuid, r.name, r.experiment_id, r.status, r.start_time FROM runs r "
    "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ? "
    "WHERE r.lifecycle_stage = 'active' AND r.experiment_id IN ({ids}) "
    # MLflow's order: runs without a start time last, then the time, then the run id.
    "ORDER BY r.start_time IS NULL, r.start_time {direction}, r.run_uuid LIMIT ?"
)


def sqlite_path(tracking_uri: str) -> pathlib.Path | None:
    """The database file of a `sqlite:///PATH` URI; None for any other URI (or query options)."""
    if not tracking_uri.startswith("sqlite:///") or "?" in tracking_uri:
        return None
    return pathlib.Path(tracking_uri[len("sqlite:///"):])


class SqliteRuns:
    """The run_rows reader over one sqlite file. A missing file is a store with no runs."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A URI so that mode=ro applies; as_uri() percent-escapes odd characters in the path.
        connection = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            yield connection
        finally:
            connection.close()

    def readable(self) -> bool:
        """True when the file is missing or has every table and column read here."""
        if not self.path.exists():
            return True
        try:
            with self._connect() as db:
                for table, needed in _COLUMNS.items():
                    present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                    if not needed <= present:
                        return False
        except sqlite3.DatabaseError:  # not a database, or unreadable: MLflow's own error says more
            return False
        return True

    def experiment_ids(self, name: str | None) -> list[str]:
        if not self.path.exists():
            return []
        query = "SELECT experiment_id FROM experiments WHERE lifecycle_stage = 'active'"
        params: tuple = ()
        if name is not None:
            query, params = query + " AND name = ?", (name,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY experiment_id", params).fetchall()
        return [str(row[0]) for row in rows]

    def job_runs(self, experiment_ids: Sequence[str], limit: int) -> list[RunRow]:
        return self._runs("h2s.run_type", "job", experiment_ids, "DESC", limit)

    def stage_runs(self, job: RunRow) -> list[RunRow]:
        return self._runs("mlflow.parentRunId", job.run_id, [job.experiment_id], "ASC", SEARCH_MAX_RESULTS)

    def _runs(self, tag: str, value: str, experiment_ids: Sequence[str], direction: str, limit: int) -> list[RunRow]:
        if not experiment_ids:
            return []
        query = _SELECT_RUNS.format(ids=", ".join("?" * len(experiment_ids)), direction=direction)
        with self._connect() as db:
            runs = db.execute(query, (tag, value, *(int(i) for i in experiment_ids), limit)).fetchall()
            run_ids = [run[0] for run in runs]
            tags = _by_run(db, "SELECT run_uuid, key, value FROM tags", run_ids)
            metrics = _by_run(db, "SELECT run_uuid, key, CASE WHEN is_nan THEN 'nan' ELSE value END "
                                  "FROM latest_metrics", run_ids)
        return [RunRow(run_id=run_id, run_name=name, experiment_id=str(experiment_id), status=status,
                       start_time=start_time, tags=tags.get(run_id, {}),
                       metrics={k: float(v) for k, v in metrics.get(run_id, {}).items()})
                for run_id, name, experiment_id, status, start_time in runs]


def _by_run(db: sqlite3.Connection, select: str, run_ids: Sequence[str]) -> dict[str, dict[str, object]]:
    """{run_id: {key: value}} from `select` (run_uuid, key, value) over the given runs."""
    found: dict[str, dict[str, object]] = {}
    if run_ids:
        where = f" WHERE run_uuid IN ({', '.join('?' * len(run_ids))})"
        for run_id, key, value in db.execute(select + where, run_ids):
            found.setdefault(run_id, {})[key] = value
    return found
