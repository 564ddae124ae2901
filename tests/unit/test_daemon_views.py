"""What porchd adds to `status` and `graph` (porch/daemon_views.py), from a fake broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from porch.config import PipelineConfig
from porch.control import WorkerState
from porch.daemon_views import encode_nodes, graph_nodes, remote_rows, with_daemon_figures
from porch.discovery import Remote
from porch.rates import RateMeter
from porch.restart import RestartPolicy, RestartTracker
from porch.status import DaemonFigures, PipelineStatus, ProcessStatus
from porch.worker_handle import RestartBook, WorkerHandle

pytestmark = pytest.mark.timeout(30)


def remote(name: str, host: str, state: WorkerState = WorkerState.RUNNING) -> Remote:
    return Remote(name, f"tcp://{host}:1", state, host, f"{host}-name", "d1", last_seen=0.0)


class FakeTable:
    def __init__(self, chosen: dict[str, Remote]) -> None:
        self.chosen = chosen

    def resolve(self, local: list[str]) -> dict[str, Remote]:
        return self.chosen


class FakeBroker:
    def __init__(self, remotes: list[Remote], withdrawn: dict[str, tuple[Remote, float]]) -> None:
        self._remotes = remotes
        self.withdrawn = withdrawn
        self.table = FakeTable({r.name: r for r in remotes[:1]})

    def remotes(self) -> list[Remote]:
        return self._remotes


def test_remote_rows_say_which_is_used_and_what_was_withdrawn() -> None:
    far, other = remote("far", "10.0.0.2"), remote("other", "10.0.0.3")
    gone = remote("gone", "10.0.0.4")
    broker = FakeBroker([far, other], {"gone": (gone, 123.0)})
    rows = remote_rows(broker, ["local"])  # type: ignore[arg-type]
    assert [(r.name, r.state, r.used) for r in rows] == [
        ("far", "running", True),
        ("other", "running", False),
        ("gone", "withdrawn", False),
    ]
    assert rows[2].endpoint is None and rows[2].withdrawn_since == 123.0
    assert remote_rows(None, ["local"]) == []


def test_graph_joins_the_hosts_that_claim_one_remote_name() -> None:
    config = PipelineConfig(name="a", scripts=(), target_pipeline_names=("far",),
                            path=Path("/c/a.json"))  # fmt: skip
    local = WorkerHandle(config, RestartBook(RestartTracker(RestartPolicy.NEVER)))
    broker = FakeBroker([remote("far", "h1"), remote("far", "h2"), remote("a", "h3")], {})
    nodes = graph_nodes([local], broker)  # type: ignore[arg-type]
    assert [(n.name, n.state, n.host) for n in nodes] == [
        ("a", "starting", "local"), ("far", "conflict", "h1, h2")]  # fmt: skip
    assert encode_nodes(nodes)["nodes"] == [
        {"name": "a", "state": "starting", "targets": ["far"], "host": "local"},
        {"name": "far", "state": "conflict", "targets": [], "host": "h1, h2"},
    ]


def test_porchds_figures_join_each_status() -> None:
    rates = RateMeter(("msgs_in", "msgs_out"))
    rates.add(0.0, "p", {"msgs_in": 0, "msgs_out": 0})
    rates.add(1.0, "p", {"msgs_in": 10, "msgs_out": 4})
    running = PipelineStatus("p", "running", ProcessStatus(pid=7))
    p, q = with_daemon_figures([running, PipelineStatus("q", "stopped")], {"q": 3}, rates, 1.0)
    assert p.daemon == DaemonFigures(log_lines_dropped=0, msgs_in_per_s=10.0, msgs_out_per_s=4.0)
    assert q.daemon == DaemonFigures(log_lines_dropped=3, msgs_in_per_s=0, msgs_out_per_s=0)
