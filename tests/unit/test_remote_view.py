"""What a broker tells its workers of remote pipelines: warm-up, resolution, withdrawal,
conflicts, the directory entries (pure logic, times passed in; no socket)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from porch.control import WorkerState
from porch.directory import DirectoryEntry, Entry, Withdrawn
from porch.discovery import Beacon
from porch.remote_view import MAX_WITHDRAWN, WARMUP_S, RemoteView

pytestmark = pytest.mark.timeout(10)

EXPIRY_S = 3.0
REMOTE = Entry("remote_sink", "tcp://10.0.0.2:4000", WorkerState.RUNNING, 4, key="k2",
               targets=("other",))  # fmt: skip
LOCAL = [Entry("local_source", "tcp://127.0.0.1:5000", WorkerState.RUNNING,
               targets=("remote_sink",))]  # fmt: skip


def beacon(daemon: str, *entries: Entry, seq: int = 1, host: str = "10.0.0.2") -> Beacon:
    return Beacon(daemon, f"origin-{daemon}", host, "beta", 1000.0 + seq, "n", seq, entries)


def warm_view() -> RemoteView:
    view = RemoteView.start("me", EXPIRY_S, interval_s=1.0, now=0.0)
    assert view.expire(WARMUP_S)  # the warm-up's end is a change
    return view


def test_nothing_is_told_to_workers_before_the_warm_up_ends() -> None:
    view = RemoteView.start("me", EXPIRY_S, interval_s=1.0, now=0.0)
    view.merge(beacon("d2", REMOTE), now=0.1)

    assert view.directory([]) == {}
    assert view.expire(WARMUP_S) and view.warm_at is None
    expected = DirectoryEntry(WorkerState.RUNNING, REMOTE.endpoint, "10.0.0.2", 4, "k2",
                              ("other",), False)  # fmt: skip
    assert view.directory([]) == {"remote_sink": expected}
    assert view.directory(["remote_sink"]) == {}  # a local pipeline of that name wins here


def test_a_targeted_remote_that_falls_silent_is_withdrawn_then_back() -> None:
    view = warm_view()
    view.merge(beacon("d2", REMOTE), now=1.0)
    view.changed(LOCAL, "here")
    with capture_logs() as events:
        assert view.expire(1.0 + EXPIRY_S + 0.1)  # its host fell silent
        view.changed(LOCAL, "here")

    entry = view.directory([])["remote_sink"]
    assert entry.state is Withdrawn.WITHDRAWN and entry.endpoint is None
    assert (entry.host, entry.instance, entry.key, entry.since is not None) == (
        "10.0.0.2", 4, "k2", True)  # fmt: skip
    remote, since = view.withdrawn["remote_sink"]  # what status lists
    assert remote.name == "remote_sink" and since == entry.since
    assert [e["event"] for e in events] == ["remote_pipeline_withdrawn"]

    view.merge(beacon("d3", REMOTE), now=10.0)  # announced again (a restarted host)
    view.changed(LOCAL, "here")
    assert view.withdrawn == {}
    assert view.directory([])["remote_sink"].state is WorkerState.RUNNING


def test_an_untargeted_remote_that_falls_silent_is_just_forgotten() -> None:
    view = warm_view()
    view.merge(beacon("d2", REMOTE), now=1.0)
    view.changed([], "here")
    view.expire(1.0 + EXPIRY_S + 0.1)
    view.changed([], "here")

    assert view.withdrawn == {} and view.directory([]) == {}


def test_withdrawn_pipelines_are_bounded() -> None:
    many = [replace(REMOTE, name=f"remote_{i:04d}") for i in range(MAX_WITHDRAWN + 5)]
    local = [replace(LOCAL[0], targets=tuple(e.name for e in many))]
    view = warm_view()
    view.merge(beacon("d2", *many), now=1.0)
    view.changed(local, "here")
    view.expire(1.0 + EXPIRY_S + 0.1)
    view.changed(local, "here")

    assert len(view.withdrawn) == MAX_WITHDRAWN


def test_a_conflict_is_logged_once_and_its_end_too() -> None:
    view = warm_view()
    mine = [Entry("remote_sink", "tcp://127.0.0.1:5000", WorkerState.RUNNING)]
    with capture_logs() as events:
        view.merge(beacon("d2", REMOTE), now=1.0)
        view.changed(mine, "here")
        view.changed(mine, "here")
        assert [c.hosts[0] for c in view.conflicts(mine, "here")] == ["here"]
        view.changed([], "here")
    assert [e["event"] for e in events if "duplicate" in e["event"]] == [
        "duplicate_pipeline", "duplicate_pipeline_resolved"]  # fmt: skip


# ---- issue 13: replicas across hosts -----------------------------------------------------

B_REPLICAS = [Entry(f"stage_b#bbbbbb-{k}", f"tcp://10.0.0.2:{4000 + k}", WorkerState.RUNNING,
                    1, targets=("sink_c",), ordered=True, partition_by="key")
              for k in (0, 1)]  # fmt: skip
SENDER = [Entry("source_a", "tcp://127.0.0.1:5000", WorkerState.RUNNING, targets=("stage_b",)),
          Entry("stage_b#aaaaaa-0", "tcp://127.0.0.1:5001", WorkerState.RUNNING,
                targets=("sink_c",))]  # fmt: skip


def test_remote_replicas_join_the_directory_with_their_config() -> None:
    view = warm_view()
    view.merge(beacon("d2", *B_REPLICAS), now=1.0)
    got = view.directory([e.name for e in SENDER])
    assert sorted(got) == ["stage_b#bbbbbb-0", "stage_b#bbbbbb-1"]
    entry = got["stage_b#bbbbbb-1"]
    assert (entry.endpoint, entry.host, entry.targets, entry.ordered, entry.partition_by) == (
        "tcp://10.0.0.2:4001", "10.0.0.2", ("sink_c",), True, "key")  # fmt: skip
    assert view.conflicts(SENDER, "here") == []


def test_replicas_of_a_targeted_pipeline_are_withdrawn_when_their_host_falls_silent() -> None:
    view = warm_view()
    view.merge(beacon("d2", *B_REPLICAS), now=1.0)
    view.changed(SENDER, "here")
    view.expire(1.0 + EXPIRY_S + 0.1)
    view.changed(SENDER, "here")

    got = view.directory([e.name for e in SENDER])
    assert sorted(got) == ["stage_b#bbbbbb-0", "stage_b#bbbbbb-1"]
    assert all(e.state is Withdrawn.WITHDRAWN and e.endpoint is None for e in got.values())
    assert got["stage_b#bbbbbb-0"].partition_by == "key"  # senders still know what it was


def test_a_replica_that_ended_for_good_then_left_is_not_withdrawn() -> None:
    view = warm_view()
    view.merge(beacon("d2", *B_REPLICAS), now=1.0)
    view.changed(SENDER, "here")
    stopped = replace(B_REPLICAS[1], state=WorkerState.STOPPED, final=True)
    view.merge(beacon("d2", B_REPLICAS[0], stopped, seq=2), now=1.5)
    view.changed(SENDER, "here")
    view.merge(beacon("d2", B_REPLICAS[0], seq=3), now=2.0)  # scaled away: no longer announced
    view.changed(SENDER, "here")

    assert list(view.directory([])) == ["stage_b#bbbbbb-0"] and view.withdrawn == {}


def test_one_process_here_and_replicas_there_is_a_loud_conflict() -> None:
    view = warm_view()
    mine = [Entry("stage_b", "tcp://127.0.0.1:5000", WorkerState.RUNNING)]
    with capture_logs() as events:
        view.merge(beacon("d2", *B_REPLICAS), now=1.0)
        view.changed(mine, "alpha 10.0.0.1")
    (logged,) = [e for e in events if e["event"] == "duplicate_pipeline"]
    assert logged["log_level"] == "error" and logged["pipeline"] == "stage_b"
    assert logged["hosts"][0] == "alpha 10.0.0.1" and "10.0.0.2" in logged["hosts"][1]
    assert "runs as replicas on beta 10.0.0.2" in logged["detail"], logged["detail"]
    assert 'as one process (no "replicas" in its config) on alpha 10.0.0.1' in logged["detail"]
    assert view.directory(["stage_b"]) == {}  # the local one wins here


def test_replicas_whose_hosts_differ_in_ordered_or_partition_by_are_said_once() -> None:
    view = warm_view()
    mine = [Entry("stage_b#aaaaaa-0", "tcp://127.0.0.1:5001", WorkerState.RUNNING,
                  partition_by="user")]  # fmt: skip
    with capture_logs() as events:
        view.merge(beacon("d2", *B_REPLICAS), now=1.0)  # ordered, partition_by "key"
        view.changed(mine, "alpha 10.0.0.1")
        view.changed(mine, "alpha 10.0.0.1")
        assert sorted(view.directory([e.name for e in mine])) == [
            "stage_b#bbbbbb-0", "stage_b#bbbbbb-1"]  # still one pipeline  # fmt: skip
        agreed = [replace(mine[0], ordered=True, partition_by="key")]
        view.changed(agreed, "alpha 10.0.0.1")
    said = [e for e in events if e["event"].startswith("replica_config_differs")]
    assert [e["event"] for e in said] == ["replica_config_differs",
                                          "replica_config_differs_resolved"]  # fmt: skip
    first = said[0]
    assert first["log_level"] == "error" and first["pipeline"] == "stage_b"
    assert first["settings"]["ordered=false partition_by=user"] == ["alpha 10.0.0.1"]
    (theirs,) = first["settings"]["ordered=true partition_by=key"]
    assert "10.0.0.2" in theirs and "same config" in first["detail"]
    assert view.table.disagreements(agreed, "here") == []


def test_a_replica_its_live_host_let_go_is_gone_not_withdrawn() -> None:
    view = warm_view()
    view.merge(beacon("d2", *B_REPLICAS), now=1.0)
    view.changed(SENDER, "here")
    view.merge(beacon("d2", B_REPLICAS[0], seq=2), now=1.5)  # scaled away while running
    view.changed(SENDER, "here")
    assert list(view.directory([])) == ["stage_b#bbbbbb-0"] and view.withdrawn == {}

    view.expire(1.5 + EXPIRY_S + 0.1)  # then the host falls silent: its last one is withdrawn
    view.changed(SENDER, "here")
    assert list(view.withdrawn) == ["stage_b#bbbbbb-0"]
