"""Summary statistics shared by the benches."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The sample at rank q (0..1) of the sorted values, nearest rank, no interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def rank_percentile(values: list[float], q: float) -> float:
    """The sample at index int(q * n) of the sorted values (the next rank up): the fast-path
    bench's p50/p90 since its first report, kept so its reports stay comparable."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
