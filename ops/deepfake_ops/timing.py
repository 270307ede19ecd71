"""Timing helpers of the benchmarks: medians of repeated runs, taken in turns so that comparisons share rounds."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Timing:
    """Median seconds per item of each stage over the repetitions, and items per second; ``rounds_ms`` keeps
    every round's ms per item, so that measurements taken in the same rounds can be compared round by round."""

    stages_ms: dict[str, float]
    ms_per_item: float
    rounds_ms: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return 1000.0 / self.ms_per_item if self.ms_per_item > 0 else float("nan")


def median_timing(run: Callable[[], dict[str, float]], items: int, repeats: int) -> Timing:
    """Run ``repeats`` times (after one warm-up); ``run`` returns seconds by stage for ``items`` items."""
    return interleaved_timings({"run": (run, items)}, repeats)["run"]


def interleaved_timings(runs: dict[str, tuple[Callable[[], dict[str, float]], int]], repeats: int) -> dict[str, Timing]:
    """Median timings of several measurements taken in turns, one sample of each per round.

    Measurements that are compared with each other (480p against 4K, ours against the reference) share every
    round, so a machine whose speed drifts during the run (other tenants, heat) shifts them all alike.
    """
    for run, _ in runs.values():
        run()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (run, _) in runs.items():
            samples[name].append(run())
    timings = {}
    for name, (_, items) in runs.items():
        taken = samples[name]
        stages = {stage: 1000 * statistics.median(s[stage] for s in taken) / items for stage in taken[0]}
        rounds = [1000 * sum(s.values()) / items for s in taken]
        timings[name] = Timing(stages, statistics.median(rounds), rounds)
    return timings


def paired_ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Median, lowest and highest of the round-by-round ratios of two measurements taken in the same rounds."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return statistics.median(ratios), min(ratios), max(ratios)
