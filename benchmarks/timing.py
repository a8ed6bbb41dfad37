"""Interleaved wall-clock timing: every variant of a case is timed in round-robin order, so machine drift
(thermal, other processes) hits all variants alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_s: list[float]) -> Timing:
        ms = sorted(s * 1e3 for s in samples_s)
        q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
        return cls(statistics.median(ms), q[0], q[-1], len(ms))


def measure_interleaved(variants: Mapping[str, Callable[[], object]], runs: int = 20, warmup: int = 3,
                        max_seconds: float | None = None, min_seconds: float = 0.0,
                        max_runs: int = 1000) -> dict[str, Timing]:
    """Time each callable ``runs`` times, rotating the order every round. Returns name -> Timing.

    Rounds continue past ``runs`` until the timed phase has lasted ``min_seconds`` (at most ``max_runs``
    rounds): sub-millisecond variants need hundreds of runs before their medians settle.
    ``max_seconds`` caps the timed phase (at least 5 rounds are kept) so one slow variant cannot stall a run.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while r < runs or (time.perf_counter() - start < min_seconds and r < max_runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            samples[name].append(time.perf_counter() - t0)
        r += 1
        if max_seconds is not None and r >= 5 and time.perf_counter() - start > max_seconds:
            break
    return {n: Timing.from_samples(s) for n, s in samples.items()}
