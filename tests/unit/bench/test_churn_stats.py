"""The pod-churn bench's arithmetic (bench/churn_stats.py): histogram deltas and
quantiles as Prometheus estimates them, watch-timestamp latencies and the goal."""

from __future__ import annotations

import math

import pytest

from bench.churn_stats import (
    EMPTY,
    Histogram,
    durations,
    histogram_summary,
    parse_histograms,
    ratio,
    start_goal,
    summary,
)

INF = math.inf

# Two label sets of one histogram (as kubelet splits by runtime handler), another
# histogram, a counter and a gauge beside it.
PAGE = """\
# HELP containerd_cri_sandbox_create_network_seconds time to create the network of a sandbox
# TYPE containerd_cri_sandbox_create_network_seconds histogram
containerd_cri_sandbox_create_network_seconds_bucket{le="0.01"} 1
containerd_cri_sandbox_create_network_seconds_bucket{le="0.1"} 3
containerd_cri_sandbox_create_network_seconds_bucket{le="1"} 4
containerd_cri_sandbox_create_network_seconds_bucket{le="+Inf"} 4
containerd_cri_sandbox_create_network_seconds_sum 0.5
containerd_cri_sandbox_create_network_seconds_count 4
# HELP kubelet_run_podsandbox_duration_seconds x
# TYPE kubelet_run_podsandbox_duration_seconds histogram
kubelet_run_podsandbox_duration_seconds_bucket{runtime_handler="",le="0.5"} 2
kubelet_run_podsandbox_duration_seconds_bucket{runtime_handler="",le="+Inf"} 3
kubelet_run_podsandbox_duration_seconds_sum{runtime_handler=""} 2.0
kubelet_run_podsandbox_duration_seconds_count{runtime_handler=""} 3
kubelet_run_podsandbox_duration_seconds_bucket{runtime_handler="runc",le="0.5"} 1
kubelet_run_podsandbox_duration_seconds_bucket{runtime_handler="runc",le="+Inf"} 1
kubelet_run_podsandbox_duration_seconds_sum{runtime_handler="runc"} 0.25
kubelet_run_podsandbox_duration_seconds_count{runtime_handler="runc"} 1
# TYPE containerd_cri_network_plugin_operations_total counter
containerd_cri_network_plugin_operations_total{operation_type="SetUpPod"} 9
# TYPE process_open_fds gauge
process_open_fds 12
"""


def hist(*buckets: tuple[float, float], total: float = 0.0) -> Histogram:
    return Histogram(tuple(buckets), total, buckets[-1][1])


def test_parse_keeps_the_wanted_histograms_and_adds_their_matching_label_sets() -> None:
    found = parse_histograms(
        PAGE,
        {
            "setup": ("containerd_cri_sandbox_create_network_seconds", {}),
            "sandbox": ("kubelet_run_podsandbox_duration_seconds", {}),
            "runc": ("kubelet_run_podsandbox_duration_seconds", {"runtime_handler": "runc"}),
            "counter": ("containerd_cri_network_plugin_operations_total", {}),
            "absent": ("not_on_the_page_seconds", {}),
        },
    )
    assert set(found) == {"setup", "sandbox", "runc"}
    assert found["setup"].buckets == ((0.01, 1), (0.1, 3), (1.0, 4), (INF, 4))
    assert (found["setup"].total, found["setup"].count) == (0.5, 4)
    assert found["sandbox"].buckets == ((0.5, 3), (INF, 4))
    assert (found["sandbox"].total, found["sandbox"].count) == (2.25, 4)
    assert found["runc"].buckets == ((0.5, 1), (INF, 1))
    assert (found["runc"].total, found["runc"].count) == (0.25, 1)


def test_a_delta_is_what_happened_between_two_scrapes() -> None:
    before = hist((0.1, 2), (1.0, 3), (INF, 3), total=0.6)
    after = hist((0.1, 5), (1.0, 9), (INF, 10), total=9.6)
    delta = after.minus(before)
    assert delta.buckets == ((0.1, 3), (1.0, 6), (INF, 7))
    assert delta.count == 7
    assert delta.mean() == pytest.approx(9.0 / 7)


def test_a_delta_refuses_a_restart_or_other_buckets() -> None:
    with pytest.raises(ValueError, match="backwards"):
        hist((1.0, 1), (INF, 1)).minus(hist((1.0, 2), (INF, 2)))
    with pytest.raises(ValueError, match="different buckets"):
        hist((1.0, 1), (INF, 1)).minus(hist((2.0, 1), (INF, 1)))


def test_plus_adds_nodes_and_empty_is_neutral() -> None:
    a = hist((1.0, 1), (INF, 2), total=3.0)
    b = hist((1.0, 4), (INF, 4), total=1.0)
    both = a.plus(b)
    assert both.buckets == ((1.0, 5), (INF, 6))
    assert (both.total, both.count) == (4.0, 6)
    assert EMPTY.plus(a) == a
    assert a.plus(EMPTY) == a
    with pytest.raises(ValueError, match="different buckets"):
        a.plus(hist((2.0, 1), (INF, 1)))


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    # 10 observations: 4 in (0, 0.1], 4 in (0.1, 0.5], 2 in (0.5, 1].
    h = hist((0.1, 4), (0.5, 8), (1.0, 10), (INF, 10))
    assert h.quantile(0.2) == pytest.approx(0.05)  # rank 2 of 4 in the first bucket, from 0
    assert h.quantile(0.5) == pytest.approx(0.1 + 0.4 * (5 - 4) / 4)
    assert h.quantile(0.99) == pytest.approx(0.5 + 0.5 * (9.9 - 8) / 2)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound_and_empty_is_none() -> None:
    h = hist((0.1, 1), (0.5, 1), (INF, 4))
    assert h.quantile(0.99) == 0.5
    assert hist((0.1, 0), (INF, 0)).quantile(0.5) is None
    assert EMPTY.quantile(0.5) is None
    assert EMPTY.mean() is None


def test_quantile_skips_empty_buckets() -> None:
    h = hist((0.1, 0), (0.5, 0), (1.0, 2), (INF, 2))
    assert h.quantile(0.5) == pytest.approx(0.75)


def test_durations_pair_by_name_and_list_the_missing() -> None:
    values, missing = durations({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.5, "c": 7.0, "x": 9.0})
    assert sorted(values) == [0.5, 4.0]
    assert missing == ["b"]
    with pytest.raises(ValueError, match="one clock"):
        durations({"a": 5.0}, {"a": 4.0})


def test_summary_is_nearest_rank_and_copes_with_nothing() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    s = summary(values)
    assert s["n"] == 100
    assert s["p50"] == 51.0  # rank round(0.5 * 99) = 50 (0-based)
    assert s["p99"] == 99.0
    assert s["mean"] == pytest.approx(50.5)
    assert s["max"] == 100.0
    assert summary([])["p50"] is None


def test_histogram_summary_estimates_quantiles_and_keeps_the_exact_mean() -> None:
    h = hist((0.1, 4), (0.5, 8), (1.0, 10), (INF, 10), total=3.0)
    s = histogram_summary(h)
    assert s["n"] == 10
    assert s["mean"] == pytest.approx(0.3)
    assert s["p50"] == pytest.approx(0.2)


def test_ratio_is_ours_over_reference() -> None:
    assert ratio(2.0, 4.0) == 0.5
    assert ratio(None, 4.0) is None
    assert ratio(1.0, 0.0) is None


def test_goal_needs_both_percentiles_at_most_the_reference_and_p99_within_the_slo() -> None:
    ref = {"p50": 2.0, "p99": 4.0}
    assert start_goal({"p50": 1.9, "p99": 4.0}, ref, 5.0)["met"] is True
    slower_median = start_goal({"p50": 2.1, "p99": 3.0}, ref, 5.0)
    assert slower_median["met"] is False
    assert slower_median["p50_le_reference"] is False
    assert slower_median["p99_le_reference"] is True
    both_slow = start_goal({"p50": 5.0, "p99": 6.0}, {"p50": 6.0, "p99": 7.0}, 5.0)
    assert both_slow["p99_le_reference"] is True
    assert both_slow["p99_le_slo"] is False
    assert both_slow["met"] is False
    assert start_goal({"p50": None, "p99": 1.0}, ref, 5.0)["met"] is None
