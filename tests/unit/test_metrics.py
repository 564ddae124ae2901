"""Rates, the Prometheus collector over a status snapshot, and the dashboard's exposure rules."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from porch import metrics, web
from porch.errors import UsageError
from porch.rates import CounterRate, RateMeter

pytestmark = pytest.mark.timeout(30)

PIPELINE = {
    "name": "pipe",
    "state": "running",
    "iterations": 10,
    "msgs_in": 20,
    "msgs_out": 10,
    "queue_depth": 3,
    "dropped": 1,
    "bad_frames": 2,
    "dead_letters": 4,
    "rate_per_s": 2.5,
    "msgs_in_per_s": 5.0,
    "msgs_out_per_s": 2.5,
    "cpu_percent": None,
    "rss_bytes": 1024,
    "restarts": 1,
}


def test_rate_is_growth_over_the_window() -> None:
    rate = CounterRate(window_s=3.0)
    assert rate.per_s() == 0.0
    for t in range(10):
        rate.add(float(t), 4.0 * t)
    assert rate.per_s() == pytest.approx(4.0)


def test_a_counter_that_went_down_restarts_the_window() -> None:
    rate = CounterRate()
    rate.add(0.0, 100.0)
    rate.add(1.0, 200.0)
    rate.add(2.0, 5.0)  # the worker restarted
    assert rate.per_s() == 0.0
    rate.add(3.0, 15.0)
    assert rate.per_s() == pytest.approx(10.0)


def test_repeated_samples_are_ignored_and_a_quiet_counter_has_no_rate() -> None:
    rate = CounterRate(window_s=3.0)
    rate.add(0.0, 0.0)
    rate.add(1.0, 10.0)
    rate.add(1.0, 10.0)
    assert rate.per_s(now_s=2.0) == pytest.approx(10.0)
    assert rate.per_s(now_s=5.0) == 0.0


def test_meter_skips_missing_values_and_forgets_removed_names() -> None:
    meter = RateMeter(("msgs_in",))
    meter.add(0.0, "a", {"msgs_in": 0})
    meter.add(1.0, "a", {"msgs_in": 3, "other": "x"})
    meter.add(1.0, "b", {})
    assert meter.per_s("a", "msgs_in") == pytest.approx(3.0)
    assert meter.per_s("b", "msgs_in") == 0.0
    meter.forget(["b"])
    assert meter.per_s("a", "msgs_in") == 0.0


def parse(snapshot: metrics.Snapshot) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = metrics.exposition(metrics.registry(lambda: snapshot)).decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def test_collector_turns_a_snapshot_into_metrics() -> None:
    discovery = {"beacons_sent": 7, "beacons_received": 3, "beacons_rejected": 2,
                 "rejected": {"unsigned": 2, "stale": 0}}  # fmt: skip
    snapshot = {
        "status": {
            "daemon": {"uptime_s": 12.5, "discovery": discovery},
            "pipelines": [PIPELINE],
            "remote": [{"name": "far"}],
        },
        "steps": {"pipe": {"bounds": [0.01, 0.1], "counts": [5, 3, 2], "sum": 1.5}},
    }
    found = parse(snapshot)
    pipe = (("pipeline", "pipe"),)
    assert found["porch_messages_in_total"][pipe] == 20
    assert found["porch_messages_out_total"][pipe] == 10
    assert found["porch_dead_letters_total"][pipe] == 4
    assert found["porch_duplicates_total"][pipe] == 0  # not reported: 0
    assert found["porch_queue_depth"][pipe] == 3
    assert found["porch_rss_bytes"][pipe] == 1024
    assert pipe not in found.get("porch_cpu_percent", {})  # unknown: no sample
    assert found["porch_pipeline_state"][(("pipeline", "pipe"), ("state", "running"))] == 1
    assert found["porch_beacons_rejected_total"][()] == 2
    assert found["porch_beacon_rejections_total"][(("reason", "unsigned"),)] == 2
    assert found["porch_remote_pipelines"][()] == 1
    buckets = found["porch_step_duration_seconds_bucket"]
    assert buckets[(("le", "0.01"), ("pipeline", "pipe"))] == 5
    assert buckets[(("le", "0.1"), ("pipeline", "pipe"))] == 8
    assert buckets[(("le", "+Inf"), ("pipeline", "pipe"))] == 10
    assert found["porch_step_duration_seconds_sum"][pipe] == 1.5


def test_no_snapshot_yet_means_only_process_metrics() -> None:
    found = parse(None)  # type: ignore[arg-type]
    assert not any(name.startswith("porch_") for name in found)


@pytest.mark.parametrize(
    "report",
    [{}, {"bounds": [1], "counts": [1], "sum": 1}, {"bounds": ["x"], "counts": [1, 2], "sum": 1}],
)
def test_malformed_step_reports_are_ignored(report: dict[str, object]) -> None:
    assert metrics.step_histogram(report) is None


def test_parse_address() -> None:
    assert web.parse_address("8765") == ("127.0.0.1", 8765)
    assert web.parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert web.parse_address("[::1]:9000") == ("::1", 9000)
    with pytest.raises(UsageError, match="HOST:PORT"):
        web.parse_address("localhost:http")


def test_every_address_needs_a_token_and_other_addresses_a_key_too() -> None:
    local = web.plan("127.0.0.1:1", None, None)  # other unix users share loopback
    assert local.generated and local.token and len(local.token) >= 24 and local.loopback
    assert web.plan("localhost:1", None, "t").token == "t"
    with pytest.raises(UsageError, match="cluster key"):
        web.plan("0.0.0.0:1", None, None)
    generated = web.plan("0.0.0.0:1", "/etc/porch/cluster.key", None)
    assert generated.generated and generated.token and len(generated.token) >= 24
    assert web.plan("0.0.0.0:1", "k", "given").token == "given"


def test_token_check() -> None:
    server = web.DashboardServer(web.HttpPlan("127.0.0.1", 0, "abc", loopback=True), lambda: None)
    try:
        assert server.authorized("Bearer abc", {})
        assert server.authorized(None, {"token": ["abc"]})
        assert not server.authorized("Bearer abd", {"token": ["x"]})
        assert not server.authorized(None, {})
    finally:
        server.close()
