"""A replicated pipeline in every view (issue 13): status assembly, `porchctl status` and
`--json`, top, /metrics, the dashboard's /api/status, the graph and `porch run`'s progress show
the pipeline once, with its totals, and its replica processes (NAME#TAG-K) under it; a pipeline
without `replicas` stays one plain row."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from porch import metrics, top, web
from porch.config import PipelineConfig
from porch.control import WorkerState
from porch.daemon_views import encode_nodes, graph_nodes, with_daemon_figures
from porch.discovery import Remote
from porch.graph import Node, Replica, from_result, render, to_dict
from porch.health import HealthReport
from porch.names import replica_name
from porch.porchctl_format import format_discovery, format_remote, format_status, format_targets
from porch.progress import Row, footer_lines, grouped, summary_lines
from porch.rates import RateMeter
from porch.restart import RestartPolicy, RestartTracker
from porch.status import (
    STATE_PRECEDENCE,
    DaemonStatus,
    PipelineStatus,
    ProcessStatus,
    RemoteStatus,
    Snapshot,
    StatusReport,
    TargetStatus,
    derived_state,
)
from porch.status import grouped as grouped_statuses
from porch.supervisor_status import UsageSampler, statuses
from porch.worker_handle import RestartBook, WorkerHandle

pytestmark = pytest.mark.timeout(30)

TAG = "a1b2c3"
HASH0, HASH1 = replica_name("hash", TAG, 0), replica_name("hash", TAG, 1)
NO_SUCH_PID = 2**30  # above any pid_max: psutil finds no process, so no CPU/RSS figures


class FakePopen:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdout = self.stderr = None

    def poll(self) -> int | None:
        return None


def handle(name: str, replicas: int | None = None, index: int = 0) -> WorkerHandle:
    """A plain pipeline's handle, or (replicas given) replica `index`'s as the supervisor makes
    it: the config renamed NAME#TAG-K with replica_of NAME."""
    config = PipelineConfig(name=name, scripts=(), target_pipeline_names=("sink",),
                            path=Path(f"/c/{name}.json"))  # fmt: skip
    if replicas is not None:
        config = replace(config, replicas=replicas, replicated=True,
                         name=replica_name(name, TAG, index), replica_of=name)  # fmt: skip
    return WorkerHandle(config, RestartBook(RestartTracker(RestartPolicy.ON_FAILURE)))


def running(h: WorkerHandle, pid: int, started_s: float, iterations: int) -> WorkerHandle:
    h.started(FakePopen(pid), started_s)  # type: ignore[arg-type]
    h.state = WorkerState.RUNNING
    h.health.receive(HealthReport(iterations=iterations, msgs_in=iterations,
                                  msgs_out=iterations, queue_depth=2), started_s)  # fmt: skip
    return h


def assembled() -> list[PipelineStatus]:
    """source (plain), hash (2 replicas: one running, one backing off after an error)."""
    source = running(handle("source"), NO_SUCH_PID - 1, 90.0, 100)
    first = running(handle("hash", 2, 0), NO_SUCH_PID - 2, 95.0, 40)
    second = running(handle("hash", 2, 1), NO_SUCH_PID - 3, 98.0, 60)
    second.exited(1)
    second.restart.tracker.on_exit(99.0, failed=True)  # one restart decided
    second.state = WorkerState.BACKOFF
    second.last_error = "ValueError: bad\nTraceback ..."
    return statuses([source, first, second], 100.0, UsageSampler())


def test_replicas_are_one_pipeline_of_totals_with_each_process_under_it() -> None:
    source, hashed = assembled()
    assert (source.name, source.replicas, source.process.pid) == ("source", (), NO_SUCH_PID - 1)
    assert hashed.name == "hash" and [r.name for r in hashed.replicas] == [HASH0, HASH1]
    assert [(r.state, r.process.pid) for r in hashed.replicas] == [
        ("running", NO_SUCH_PID - 2), ("backoff", None)]  # fmt: skip
    assert hashed.state == "running"  # running while any replica runs
    assert hashed.process.pid is None and hashed.process.uptime_s == 5.0
    assert hashed.count("iterations") == 100 and hashed.count("msgs_out") == 100
    assert hashed.queue_depth == 4  # each one's last report
    assert hashed.restarts == 1 and hashed.config == "/c/hash.json"
    assert hashed.error.text == f"{HASH1}: ValueError: bad" and hashed.error.current


def test_the_json_carries_replicas_only_for_a_replicated_pipeline_and_reads_back() -> None:
    report = StatusReport(DaemonStatus(pid=1), tuple(assembled()))
    data = json.loads(json.dumps(report.encode()))
    plain, hashed = data["pipelines"]
    assert "replicas" not in plain  # a pipeline without `replicas` is exactly as before
    assert hashed["pid"] is None and hashed["iterations"] == 100
    assert [(r["name"], r["state"], r["iterations"]) for r in hashed["replicas"]] == [
        (HASH0, "running", 40), (HASH1, "backoff", 60)]  # fmt: skip
    assert all("replicas" not in r for r in hashed["replicas"])
    assert StatusReport.decode(data) == report


def test_a_replicated_pipelines_state_is_derived_from_its_replicas() -> None:
    assert derived_state(["finished", "running"]) == "running"
    assert derived_state(["finished", "failed", "stopped"]) == "failed"
    assert derived_state(["finished", "finished"]) == "finished"
    assert derived_state(["stopped", "finished"]) == "stopped"
    assert derived_state(["backoff", "starting"]) == "starting"
    assert derived_state(["from the future"]) == "from the future" and derived_state([]) == "?"


def test_porchds_figures_are_per_replica_and_totalled() -> None:
    rates = RateMeter(("msgs_in", "msgs_out"))
    for name, per_s in ((HASH0, 10), (HASH1, 30)):
        rates.add(0.0, name, {"msgs_in": 0, "msgs_out": 0})
        rates.add(1.0, name, {"msgs_in": per_s, "msgs_out": per_s})
    alive = [PipelineStatus(n, "running", ProcessStatus(pid=7)) for n in (HASH0, HASH1)]
    [hashed] = with_daemon_figures([PipelineStatus.replicated("hash", alive)], {HASH1: 2},
                                   rates, 1.0)  # fmt: skip
    assert [r.daemon.msgs_in_per_s for r in hashed.replicas] == [10.0, 30.0]
    assert (hashed.daemon.msgs_in_per_s, hashed.daemon.log_lines_dropped) == (40.0, 2)


def test_status_table_shows_the_totals_then_a_row_per_replica() -> None:
    lines = format_status(StatusReport(pipelines=tuple(assembled()))).splitlines()
    assert [line.split()[0] for line in lines] == ["PIPELINE", "source", "hash", HASH0, HASH1]
    total, first, second = lines[2:]
    assert total.split()[1:5] == ["-", "running", "(1/2", "replicas)"]
    assert total.rstrip().endswith("-")  # the errors are in the replicas' rows
    assert first.startswith("  " + HASH0) and " running " in first
    assert second.endswith("ValueError: bad") and " backoff " in second


def test_status_names_the_replica_whose_target_cannot_be_reached() -> None:
    stuck = PipelineStatus(
        HASH1, "running", targets=(TargetStatus("sink", "unreachable", None, 4),)
    )
    fine = PipelineStatus(HASH0, "running", targets=(TargetStatus("sink", "connected", None, 1),))
    hashed = PipelineStatus.replicated("hash", [stuck, fine])
    assert hashed.targets == (TargetStatus("sink", "unreachable", None, 5),)
    report = StatusReport(pipelines=(hashed,))
    assert format_targets(report) == f"{HASH1} -> sink: unreachable, 4 messages held"
    assert "running (2 replicas), target unreachable" in format_status(report)


def test_other_hosts_replicas_are_listed_under_their_pipeline_in_the_remote_table() -> None:
    far = [RemoteStatus(replica_name("hash", tag, 0), host=host, state=state, used=True)
           for tag, host, state in (("0f0f0f", "10.0.0.2", "running"),
                                    ("e0e0e0", "10.0.0.3", "failed"))]  # fmt: skip
    plain = RemoteStatus("other", host="10.0.0.4", state="running")
    lines = format_remote(StatusReport(remote=(far[0], plain, far[1]))).splitlines()
    assert [line.split()[0] for line in lines] == [
        "REMOTE", "hash", "hash#0f0f0f-0", "hash#e0e0e0-0", "other"]  # fmt: skip
    assert lines[1].split()[1:5] == ["10.0.0.2,", "10.0.0.3", "running", "(2"]
    assert lines[2].startswith("  hash#0f0f0f-0")


def test_top_shows_the_totals_and_each_replica_by_its_tag() -> None:
    lines = top.frame(StatusReport(pipelines=tuple(assembled())), 200, "12:00:00")
    _, total, first, second = lines[3:]
    assert total[0].split()[:4] == ["hash", "running", "1/2", "2x"] and total[1] == "running"
    assert first[0].split()[:3] == [f"#{TAG}-0", "running", "107374~"]  # its pid, cut
    assert second[1] == "waiting" and second[0].endswith("ValueError: bad")  # backoff's colour


def parse(snapshot: Snapshot) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = metrics.exposition(metrics.registry(lambda: snapshot)).decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def test_metrics_have_a_series_per_replica_and_plain_pipelines_keep_theirs() -> None:
    steps = {HASH0: {"bounds": [0.1], "counts": [3, 1], "sum": 0.2}}
    found = parse(Snapshot(StatusReport(pipelines=tuple(assembled())), {}, steps))
    iterations = found["porch_iterations_total"]
    assert iterations == {
        (("pipeline", "source"),): 100,
        (("pipeline", "hash"), ("replica", "0")): 40,
        (("pipeline", "hash"), ("replica", "1")): 60,
    }  # sum by (pipeline) is each pipeline's total, nothing counted twice
    state = found["porch_pipeline_state"]
    assert state[(("pipeline", "hash"), ("replica", "1"), ("state", "backoff"))] == 1
    assert state[(("pipeline", "source"), ("state", "running"))] == 1
    assert found["porch_pipeline_replicas"] == {(("pipeline", "hash"),): 2}
    assert found["porch_restarts_total"][(("pipeline", "hash"), ("replica", "1"))] == 1
    buckets = found["porch_step_duration_seconds_bucket"]
    assert buckets[(("le", "+Inf"), ("pipeline", "hash"), ("replica", "0"))] == 4


def test_dashboard_api_status_carries_the_replicas() -> None:
    snapshot = Snapshot(StatusReport(pipelines=tuple(assembled())), {"nodes": []})
    server = web.DashboardServer(web.HttpPlan("127.0.0.1", 0, None, loopback=True),
                                 lambda: snapshot)  # fmt: skip
    try:
        code, body, kind = server.api("/api/status")
    finally:
        server.close()
    assert code == 200 and kind == "application/json"
    hashed = json.loads(body)["pipelines"][1]
    assert hashed["name"] == "hash" and hashed["state"] == "running"
    assert [r["pid"] for r in hashed["replicas"]] == [NO_SUCH_PID - 2, None]


class FakeBroker:
    def __init__(self, remotes: list[Remote]) -> None:
        self._remotes = remotes

    def remotes(self) -> list[Remote]:
        return self._remotes


def test_graph_has_one_node_per_pipeline_with_every_hosts_replicas_in_it() -> None:
    handles = [handle("source"), handle("hash", 2, 0), handle("hash", 2, 1)]
    handles[1].state = WorkerState.RUNNING
    far = replica_name("hash", "0f0f0f", 0)
    remotes = [Remote(far, "tcp://h:1", WorkerState.RUNNING, "10.0.0.2", "b", "d", 0.0),
               Remote(replica_name("wide", "0f0f0f", 0), "tcp://h:2", WorkerState.FAILED,
                      "10.0.0.2", "b", "d", 0.0)]  # fmt: skip
    nodes = graph_nodes(handles, FakeBroker(remotes))  # type: ignore[arg-type]
    assert [(n.name, n.state, n.host) for n in nodes] == [
        ("source", "starting", "local"), ("hash", "running", "local, 10.0.0.2"),
        ("wide", "failed", "10.0.0.2")]  # fmt: skip
    assert nodes[1].replicas == (Replica(HASH0, "running"), Replica(HASH1, "starting"),
                                 Replica(far, "running", "10.0.0.2"))  # fmt: skip
    encoded = encode_nodes(nodes)
    assert "replicas" not in encoded["nodes"][0]  # type: ignore[index]
    assert from_result(json.loads(json.dumps(encoded))) == nodes
    assert [e["to"] for e in to_dict(nodes)["edges"]] == ["sink", "sink"]


def test_graph_labels_say_how_many_replicas_are_in_which_state() -> None:
    node = Node("hash", "running", (), replicas=(Replica(HASH0, "running"),
                                                 Replica(HASH1, "failed")))  # fmt: skip
    assert '"hash<br/>running<br/>2 replicas: 1 running, 1 failed"' in render([node], "mermaid")
    assert 'label="hash\\nrunning\\n2 replicas: 1 running, 1 failed"' in render([node], "dot")


def test_porch_run_shows_a_replicated_pipeline_once_and_its_replicas_in_the_summary() -> None:
    rows = grouped([
        Row("source", "finished", 1000, 10.0, 0.0),
        Row(HASH0, "finished", 480, 9.0, 0.0, counts=(0, 2, 0)),
        Row(HASH1, "failed", 520, 10.0, 0.0, error="boom", counts=(0, 1, 0)),
    ])  # fmt: skip
    assert [(r.label, r.state, r.items) for r in rows] == [
        ("source", "finished", 1000), ("hash (2 replicas)", "failed", 1000)]  # fmt: skip
    assert rows[1].problems == "3 dropped" and rows[1].error == f"{HASH1}: boom"
    assert summary_lines(rows, 10.0, table=False)[1:] == [
        "porch: hash: failed, 1000 items in 10.0 s (100.0/s), 2 replicas, 3 dropped",
        f"porch:   {HASH0}: finished, 480 items in 9.0 s (53.3/s)",
        f"porch:   {HASH1}: failed, 520 items in 10.0 s (52.0/s), error: boom",
    ]
    table = summary_lines(rows, 10.0, table=True)
    assert [line.split()[0] for line in table[2:]] == ["source", "hash", HASH0, HASH1]
    assert table[3].rstrip().endswith("3 dropped") and table[5].endswith("error: boom")


def test_top_lists_other_hosts_replicas_under_one_row_of_their_pipeline() -> None:
    far = [RemoteStatus(replica_name("hash", tag, 0), host=host, state="running")
           for tag, host in (("0f0f0f", "10.0.0.2"), ("e0e0e0", "10.0.0.3"))]  # fmt: skip
    lines = top.frame(StatusReport(remote=(far[0], RemoteStatus("far"), far[1])), 200, "now")
    rows = [line.split() for line, style in lines[3:] if style == "remote"]
    assert [row[:3] for row in rows] == [
        ["hash", "running", "2x"], ["#0f0f0f-0", "running", "-"], ["#e0e0e0-0", "running", "-"],
        ["far", "?", "-"]]  # fmt: skip
    assert rows[0][-2:] == ["10.0.0.2,", "10.0.0.3"] and rows[1][-1] == "10.0.0.2"


def test_other_hosts_replicas_count_once_among_the_remote_pipelines() -> None:
    far = [RemoteStatus(replica_name("hash", tag, 0)) for tag in ("0f0f0f", "e0e0e0")]
    report = StatusReport(remote=(*far, RemoteStatus("other")))
    assert "(0 running, 0 failed, 2 remote)" in top.header_line(report, "now")
    assert parse(Snapshot(report, {}))["porch_remote_pipelines"][()] == 2


def test_a_plain_pipeline_beside_replicas_of_its_name_stays_apart() -> None:
    # a conflict (the supervisor and discovery refuse it), shown as it is, not merged
    rows = [PipelineStatus("hash", "failed"), PipelineStatus(HASH0, "running")]
    plain, hashed = grouped_statuses(rows)
    assert (plain.name, plain.replicas) == ("hash", ())
    assert [r.name for r in hashed.replicas] == [HASH0]


def test_a_change_to_each_process_takes_the_totals_again() -> None:
    hashed = PipelineStatus.replicated(
        "hash", [PipelineStatus(n, "running", ProcessStatus(pid=1)) for n in (HASH1, HASH0)]
    )
    assert [r.name for r in hashed.replicas] == [HASH0, HASH1]  # by index
    stopped = hashed.each_process(lambda r: replace(r, state="stopped"))
    assert stopped.state == "stopped" and {r.state for r in stopped.replicas} == {"stopped"}
    plain = PipelineStatus("p", "running")
    assert plain.each_process(lambda r: replace(r, state="failed")).state == "failed"


def test_porch_runs_footer_is_one_line_per_pipeline_saying_its_replicas() -> None:
    rows = grouped([Row(HASH0, "running", 10, 2.0, 5.0), Row(HASH1, "backoff", 4, 2.0, 0.0)])
    [line] = footer_lines(rows, height=5, width=120)
    assert line.split()[:6] == ["hash", "(2", "replicas)", "running", "14", "items"]
    assert "5.0/s" in line


def test_the_dashboard_page_derives_a_state_in_porchctls_order() -> None:
    page = web.static_file("index.html").decode()
    assert "__PORCH_" not in page
    assert f'id="state-order">{json.dumps(STATE_PRECEDENCE)}<' in page


def test_discovery_says_which_names_conflict_and_which_replicas_disagree() -> None:
    found = {"beacons_sent": 1, "conflicts": [{"name": "dup", "hosts": ["local", "10.0.0.2"]}],
             "replica_config_differs": [{"name": "hash", "settings": {
                 "ordered=true partition_by=none": ["local"],
                 "ordered=false partition_by=none": ["10.0.0.2"]}}]}  # fmt: skip
    report = StatusReport(DaemonStatus(discovery=found))
    first, conflict, differ = format_discovery(report).splitlines()
    assert first.startswith("discovery: beacons")
    assert conflict == "CONFLICT: dup is announced by local, 10.0.0.2"
    assert differ == ("REPLICAS DIFFER: hash: ordered=true partition_by=none on local; "
                      "ordered=false partition_by=none on 10.0.0.2")  # fmt: skip


def test_one_replica_is_said_in_the_singular() -> None:
    from porch.porchctl_format import replica_count

    one = SimpleNamespace(state="running", replicas=[SimpleNamespace(state="running")])
    assert replica_count(one) == " (1 replica)"  # type: ignore[arg-type]
    two = SimpleNamespace(state="running", replicas=[SimpleNamespace(state="running")] * 2)
    assert replica_count(two) == " (2 replicas)"  # type: ignore[arg-type]
