"""The session of a Tune trial that runs the loop in its own process (`scaling.num_workers: 0`).

Checkpoints are written like `LocalSession`'s (atomically, under the trial's folder in the
tune stage's output), so a restored Tuner resumes a trial from its own files, on any
storage. Metrics go to Tune at every log step through `report_metrics` (the loop's hook),
so ASHA can stop a poor trial long before its first checkpoint. Each report carries
`step`, the scheduler's time attribute.

The last step's report is held back until `flush()`: Tune may stop a trial at any report
(ASHA at `max_t` or at a rung), and a trial stopped inside its final report would never
write its weights. The trial function writes its outputs first, then flushes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from h2s_dist.train.session import BestRule, LocalSession


def _tune_report(metrics: dict[str, float]) -> None:
    from ray import tune

    tune.report(metrics)


class TuneSession(LocalSession):
    """LocalSession + metrics to Ray Tune (`report_to` is `ray.tune.report` unless given)."""

    def __init__(
        self,
        checkpoint_uri: str,
        spec_hash: str,
        keep_last: int = 2,
        report_to: Callable[[dict[str, float]], None] | None = None,
        final_step: int | None = None,
        best: BestRule | None = None,
    ):
        super().__init__(checkpoint_uri, spec_hash, keep_last, best)
        self._report_to = report_to or _tune_report
        self.final_step = final_step
        self.last_reported_step: int | None = None
        self.ran_here = False
        """True once a loop has run in this session (it always asks for its checkpoint first);
        False when the trial ran on Ray Train workers instead, which report through Ray."""
        self._held: dict[str, float] | None = None

    def restore(self) -> dict[str, Any] | None:
        self.ran_here = True
        return super().restore()

    def report_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Called by the loop at every log step: one Tune result with `step` in it."""
        clean = {name: float(value) for name, value in metrics.items()}
        clean["step"] = step
        self.last_reported_step = step
        if step == self.final_step:
            self._held = clean
        else:
            self._report_to(clean)

    def flush(self, extra: Mapping[str, float] | None = None) -> None:
        """Send the held final report (with `extra` metrics added), once the trial's outputs exist."""
        if self._held is not None:
            self._report_to({**self._held, **(extra or {})})
            self._held = None

    def report(self, metrics: Mapping[str, float], state: Mapping[str, Any] | None, step: int) -> None:
        super().report(metrics, state, step)
        # A loop without the hook still reaches Tune, at checkpoint cadence.
        if metrics and step != self.last_reported_step:
            self.report_metrics(metrics, step)
