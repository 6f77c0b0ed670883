"""The pod-churn bench's pure part: latencies from watch timestamps, Prometheus
histograms from the runtime's and kubelet's /metrics (deltas over a round and
quantiles the way Prometheus' histogram_quantile estimates them), and the verdict
against the goal. No cluster, no I/O: unit tested in tests/unit/bench/."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from bench.stats import percentile


@dataclass(frozen=True)
class Histogram:
    """One Prometheus histogram (all its label sets added up): cumulative counts by
    upper bound, ascending, the last bound +Inf; plus the sum and count."""

    buckets: tuple[tuple[float, float], ...]
    total: float
    count: float

    def minus(self, before: Histogram) -> Histogram:
        """What happened between two scrapes of the same histogram (`before` first)."""
        if [b for b, _ in before.buckets] != [b for b, _ in self.buckets]:
            raise ValueError("the two scrapes have different buckets")
        buckets = tuple(
            (bound, now - then)
            for (bound, now), (_, then) in zip(self.buckets, before.buckets, strict=True)
        )
        if any(c < 0 for _, c in buckets) or self.count < before.count:
            raise ValueError("the histogram went backwards (a restart between the scrapes?)")
        return Histogram(buckets, self.total - before.total, self.count - before.count)

    def plus(self, other: Histogram) -> Histogram:
        if not self.buckets:
            return other
        if not other.buckets:
            return self
        if [b for b, _ in other.buckets] != [b for b, _ in self.buckets]:
            raise ValueError("the two histograms have different buckets")
        buckets = tuple(
            (bound, a + b) for (bound, a), (_, b) in zip(self.buckets, other.buckets, strict=True)
        )
        return Histogram(buckets, self.total + other.total, self.count + other.count)

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: the bucket holding rank q*count, linear inside
        it (from 0 for the first bucket); a rank in the +Inf bucket gives the highest
        finite bound. An estimate, only as fine as the buckets."""
        if not self.count:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank and cumulative > below:
                if math.isinf(bound):
                    return lower
                return lower + (bound - lower) * (rank - below) / (cumulative - below)
            lower, below = bound, cumulative
        return lower


EMPTY = Histogram((), 0.0, 0.0)


def parse_histograms(
    text: str, wanted: Mapping[str, tuple[str, Mapping[str, str]]]
) -> dict[str, Histogram]:
    """From a /metrics page, per key of `wanted` (key -> metric name, labels it must
    carry): that histogram, its matching label sets added up (kubelet splits by
    runtime handler or operation, containerd by operation). A histogram the page
    lacks is missing from the result."""
    families = {
        family.name: family
        for family in text_string_to_metric_families(text)
        if family.type == "histogram"
    }
    found: dict[str, Histogram] = {}
    for key, (name, labels) in wanted.items():
        if name not in families:
            continue
        by_bound: dict[float, float] = {}
        total = count = 0.0
        for sample in families[name].samples:
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                by_bound[bound] = by_bound.get(bound, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
        found[key] = Histogram(tuple(sorted(by_bound.items())), total, count)
    return found


def durations(
    starts: Mapping[str, float], ends: Mapping[str, float]
) -> tuple[list[float], list[str]]:
    """Per key, end minus start (same clock), and the keys that never ended."""
    values = [ends[k] - starts[k] for k in starts if k in ends]
    missing = sorted(k for k in starts if k not in ends)
    if any(v < 0 for v in values):
        raise ValueError("an end before its start: the timestamps are not from one clock")
    return values, missing


def summary(values: list[float]) -> dict[str, float | int | None]:
    """p50, p99 (nearest rank, bench.stats) and mean of seconds, with the count."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "mean": sum(values) / len(values),
        "max": max(values),
    }


def histogram_summary(hist: Histogram) -> dict[str, float | int | None]:
    """The same shape as `summary` from a histogram delta: p50/p99 estimated from the
    buckets, the mean exact (sum / count)."""
    return {
        "n": int(hist.count),
        "p50": hist.quantile(0.5),
        "p99": hist.quantile(0.99),
        "mean": hist.mean(),
        "max": None,
    }


def ratio(ours: float | None, reference: float | None) -> float | None:
    """cniwarden / reference (below 1: cniwarden is faster); None if either is unknown."""
    if ours is None or reference is None or reference <= 0:
        return None
    return ours / reference


def start_goal(
    ours: Mapping[str, float | int | None], reference: Mapping[str, float | int | None], slo: float
) -> dict[str, bool | None]:
    """The issue's goal for pod start: cniwarden's p50 and p99 at most the reference's,
    and its p99 at most `slo` seconds. None where a figure is missing."""

    def at_most(a: float | int | None, b: float | int | None) -> bool | None:
        return None if a is None or b is None else a <= b

    checks = {
        "p50_le_reference": at_most(ours["p50"], reference["p50"]),
        "p99_le_reference": at_most(ours["p99"], reference["p99"]),
        "p99_le_slo": at_most(ours["p99"], slo),
    }
    met = None if None in checks.values() else all(checks.values())
    return {**checks, "met": met}
