"""Progress on the terminal, alike for every stage: a tqdm bar when the output is a terminal,
plain periodic lines when it is not (CI logs, Ray worker logs, `h2s submit`), nothing on
ranks other than 0.

    bar = progress.build("train", total=500, initial=120, rate_unit="samples", enabled=dist.is_main())
    bar.update(121, samples=3872, loss=0.0312)   # the position so far, not an increment
    bar.close()

A plain line, written to stderr at the first update, then at most every `every_s` seconds
($H2S_PROGRESS_EVERY_S, default 15) and at close:

    [pretrain] step 121/500 loss 0.0312 23.1 samples/s eta 1m12s
    [pretrain] step 500/500 loss 0.0101 23.4 samples/s done in 4m31s

Rates and the ETA count from the first update (start-up, such as loader workers spinning
up, is left out); `samples` is the rate's count when given, else the position itself
(videos/s, chunks/s). A resumed run starts at `initial`.

The label is the stage's name in the job: the pipeline runner hands it to the launcher
(`Tracking.stage`), which sets $H2S_STAGE in the process that runs the stage (and in every
Ray Train worker); without it (a stage called directly, `h2s ingest`) the caller's default
shows. $H2S_PROGRESS = bar | lines | off overrides the choice of bar or lines.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Protocol

STAGE_ENV = "H2S_STAGE"
MODE_ENV = "H2S_PROGRESS"
EVERY_ENV = "H2S_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 15.0
MODES = ("bar", "lines", "off")


class Progress(Protocol):
    def update(self, done: int, *, samples: int | None = None, **values: float | None) -> None:
        """The position so far (`done` of `total`), the rate's count so far, values to show
        (None: not shown)."""

    def close(self) -> None: ...


class NullProgress:
    """What ranks other than 0 (and `off`) get: the same methods, doing nothing."""

    def update(self, done: int, *, samples: int | None = None, **values: float | None) -> None:
        pass

    def close(self) -> None:
        pass


def stage_label(default: str) -> str:
    """The name progress shows: $H2S_STAGE (set by the launcher) or `default`."""
    return os.environ.get(STAGE_ENV) or default


def headline_loss(terms: Mapping[str, float]) -> float | None:
    """The loss worth a glance: `loss/total`, else `loss/action`, else the first `loss/*`."""
    for name in ("loss/total", "loss/action"):
        if name in terms:
            return terms[name]
    return next((v for k, v in terms.items() if k.startswith("loss/")), None)


def format_duration(seconds: float) -> str:
    """45s, 1m12s, 2h03m."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_rate(per_s: float, unit: str) -> str:
    """23.1 samples/s; below 0.1 per second, per minute (0.9 chunks/min), so slow work is not 0.0."""
    return f"{per_s:.1f} {unit}/s" if per_s >= 0.1 else f"{per_s * 60:.2g} {unit}/min"


def _format_value(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


class _Meter:
    """Position, rate and ETA, counted from the first update."""

    def __init__(self, total: int, initial: int, rate_unit: str, clock: Callable[[], float]):
        self.total, self.done, self.rate_unit, self.clock = total, initial, rate_unit, clock
        self.started = clock()
        self.first: tuple[float, int, int] | None = None  # (time, done, samples) at the first update
        self.samples = 0
        self.values: dict[str, float] = {}

    def update(self, done: int, samples: int | None, values: Mapping[str, float | None]) -> float:
        now = self.clock()
        self.done, self.samples = done, done if samples is None else samples
        self.values = {k: v for k, v in values.items() if v is not None}
        if self.first is None:
            self.first = (now, self.done, self.samples)
        return now

    def rates(self, now: float) -> tuple[float | None, float | None]:
        """(samples per second, seconds left), None before there is anything to measure."""
        if self.first is None or now <= self.first[0] or self.done <= self.first[1]:
            return None, None
        elapsed = now - self.first[0]
        per_s = (self.samples - self.first[2]) / elapsed
        left_s = (self.total - self.done) * elapsed / (self.done - self.first[1])
        return per_s, left_s

    def postfix(self, now: float, with_rate: bool = True) -> list[str]:
        """`loss 0.0312`, `23.1 samples/s`: what both modes show beside the position."""
        parts = [f"{k} {_format_value(v)}" for k, v in self.values.items()]
        per_s, _ = self.rates(now)
        if per_s is not None and with_rate:
            parts.append(format_rate(per_s, self.rate_unit))
        return parts


class LineProgress:
    """Plain lines: at the first update, then at most every `every_s` seconds, and at close
    (which says the last position, so reaching `total` waits for it)."""

    def __init__(self, label: str, total: int, *, unit: str, initial: int, rate_unit: str, stream: IO[str],
                 clock: Callable[[], float], every_s: float):
        self.label, self.unit, self.stream, self.every_s = label, unit, stream, every_s
        self.meter = _Meter(total, initial, rate_unit, clock)
        self.printed_at: float | None = None

    def update(self, done: int, *, samples: int | None = None, **values: float | None) -> None:
        now = self.meter.update(done, samples, values)
        if done < self.meter.total and (self.printed_at is None or now - self.printed_at >= self.every_s):
            self._print(now, closing=False)

    def close(self) -> None:
        if self.meter.first is not None:  # nothing to say when nothing was done (a finished resume)
            self._print(self.meter.clock(), closing=True)

    def line(self, now: float, closing: bool) -> str:
        meter = self.meter
        parts = [f"[{self.label}] {self.unit} {meter.done}/{meter.total}", *meter.postfix(now)]
        if closing:
            parts.append(f"done in {format_duration(now - meter.started)}")
        else:
            _, left_s = meter.rates(now)
            parts.append(f"eta {format_duration(left_s)}" if left_s is not None else "eta ?")
        return " ".join(parts)

    def _print(self, now: float, closing: bool) -> None:
        self.stream.write(self.line(now, closing) + "\n")
        self.stream.flush()
        self.printed_at = now


class TqdmProgress:
    """A tqdm bar (its own rate and ETA) with the values and samples/s as postfix."""

    def __init__(self, label: str, total: int, *, unit: str, initial: int, rate_unit: str, stream: IO[str],
                 clock: Callable[[], float]):
        from tqdm import tqdm

        self.meter = _Meter(total, initial, rate_unit, clock)
        self.show_rate = rate_unit != f"{unit}s"  # tqdm shows the position's own rate (it/s) itself
        self.bar = tqdm(total=total, initial=initial, unit=unit, desc=label, file=stream, dynamic_ncols=True)

    def update(self, done: int, *, samples: int | None = None, **values: float | None) -> None:
        now = self.meter.update(done, samples, values)
        self.bar.set_postfix_str(", ".join(self.meter.postfix(now, with_rate=self.show_rate)), refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _mode(stream: IO[str]) -> str:
    mode = os.environ.get(MODE_ENV) or ("bar" if _is_terminal(stream) else "lines")
    if mode not in MODES:
        raise ValueError(f"${MODE_ENV}={mode!r}: expected one of {', '.join(MODES)} (or unset: bar on a terminal)")
    return mode


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def build(
    default_label: str,
    total: int,
    *,
    unit: str = "step",
    initial: int = 0,
    rate_unit: str | None = None,
    enabled: bool = True,
    stream: IO[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    every_s: float | None = None,
) -> Progress:
    """The progress of one stage's work: `total` `unit`s, starting at `initial` (a resume).

    default_label: shown when $H2S_STAGE is unset. rate_unit: what the rate counts
    (`samples` for training; default the unit's plural, `videos`). enabled: False on ranks other than 0.
    stream: default stderr; a terminal gets a bar, anything else plain lines (see the module doc).
    """
    if not enabled:
        return NullProgress()
    stream = stream if stream is not None else sys.stderr
    mode = _mode(stream)
    if mode == "off":
        return NullProgress()
    label, rate_unit = stage_label(default_label), rate_unit or f"{unit}s"
    if mode == "bar":
        return TqdmProgress(label, total, unit=unit, initial=initial, rate_unit=rate_unit, stream=stream, clock=clock)
    every_s = float(os.environ.get(EVERY_ENV, DEFAULT_EVERY_S)) if every_s is None else every_s
    return LineProgress(label, total, unit=unit, initial=initial, rate_unit=rate_unit, stream=stream, clock=clock,
                        every_s=every_s)
