"""Replica counts (porch/scaling.py) in-process: which processes a config runs as, what a name
in a command means, scaling up and down, reload's restarts; fake processes, the real policy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from porch.config import PipelineConfig
from porch.control import WorkerState
from porch.scaling import ProcessTable, ScalePlan, handles_of, scale_plan
from porch.supervision import FailureMode, SupervisionPolicy
from porch.worker_handle import WorkerHandle

pytestmark = pytest.mark.timeout(10)
TAG = "abc123"


class FakePopen:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = self.stderr = None

    def poll(self) -> int | None:
        return self.returncode


class Acts:
    """The supervisor's acts, recorded; a spawn starts a fake process."""

    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.table: ProcessTable | None = None
        self.policy: SupervisionPolicy | None = None

    def spawn(self, handle: WorkerHandle) -> None:
        self.done.append(("spawn", handle.name))
        handle.started(FakePopen(1000 + len(self.done)), 0.0)  # type: ignore[arg-type]

    def kill(self, handle: WorkerHandle) -> None:
        self.done.append(("kill", handle.name))

    def terminate(self, handle: WorkerHandle) -> None:
        self.done.append(("terminate", handle.name))

    def restart_pipeline(self, handle: WorkerHandle) -> None:
        self.done.append(("restart", handle.name))
        assert self.policy is not None
        self.policy.restart(handle, stopping=False)

    def stop_worker(self, handle: WorkerHandle) -> None:
        self.done.append(("stop", handle.name))
        assert self.policy is not None
        self.policy.stop(handle)

    def drop(self, handle: WorkerHandle) -> None:
        self.forget(handle)

    def record_failure(self, handle: WorkerHandle, reason: str) -> None:
        self.done.append(("failed", handle.name))

    def forget(self, handle: WorkerHandle) -> None:
        self.done.append(("forget", handle.name))
        assert self.table is not None
        del self.table.workers[handle.name]


def config(name: str, replicas: int | None = None, **fields: object) -> PipelineConfig:
    made = PipelineConfig(name=name, scripts=(), path=Path(f"/c/{name}.json"),
                          **fields)  # type: ignore[arg-type]  # fmt: skip
    if replicas is None:
        return made
    return replace(made, replicas=replicas, replicated=True)


def table(*configs: PipelineConfig) -> tuple[ProcessTable, Acts]:
    acts = Acts()
    policy = SupervisionPolicy(FailureMode.RESTART, 10.0, acts, acts)
    made = ProcessTable(configs, TAG, policy, acts)
    acts.table, acts.policy = made, policy
    for handle in made.workers.values():
        acts.spawn(handle)
    acts.done.clear()
    return made, acts


def exit_all(made: ProcessTable, acts: Acts) -> None:
    """Every process told to stop exits now."""
    for handle in list(made.workers.values()):
        if handle.alive and not handle.restart.wanted:
            handle.exited(0)
            made.policy.after_exit(handle, 0, 1.0, stopping=False)


def test_a_config_with_replicas_runs_as_one_process_per_replica() -> None:
    made, _ = table(config("src"), config("hash", 3), config("one", 1))
    assert sorted(made.workers) == [
        "hash#abc123-0", "hash#abc123-1", "hash#abc123-2", "one#abc123-0", "src"]  # fmt: skip
    assert made.workers["hash#abc123-2"].replica_of == "hash"
    assert made.workers["src"].replica_of is None and made.workers["src"].pipeline == "src"
    assert sorted(made.pipelines) == ["hash", "one", "src"]


def test_a_name_means_its_process_or_every_replica_of_its_pipeline() -> None:
    made, _ = table(config("src"), config("hash", 3))
    assert [h.name for h in made.handles_of("src")] == ["src"]
    assert [h.name for h in made.handles_of("hash")] == [
        "hash#abc123-0", "hash#abc123-1", "hash#abc123-2"]  # fmt: skip
    assert [h.name for h in made.handles_of("hash#abc123-1")] == ["hash#abc123-1"]
    assert made.handles_of("nope") == [] and made.handles_of("hash#abc123-9") == []
    removing = {"hash#abc123-2"}
    assert len(handles_of(made.workers, "hash", removing)) == 2


def test_scale_plans_start_missing_indexes_and_remove_the_highest_first() -> None:
    names = ["pp#ab-0", "pp#ab-1", "pp#ab-2"]
    assert scale_plan(names, (), 5) == ScalePlan(start=(3, 4))
    assert scale_plan(names, (), 1) == ScalePlan(remove=("pp#ab-2", "pp#ab-1"))
    assert scale_plan(names, {"pp#ab-2"}, 1) == ScalePlan(remove=("pp#ab-1",))  # 2 is going
    assert scale_plan(names, {"pp#ab-2"}, 3) == ScalePlan(revive=("pp#ab-2",))
    assert scale_plan(names, (), 3).empty


def test_scaling_up_starts_new_replicas_at_once_and_down_stops_the_highest_gracefully() -> None:
    made, acts = table(config("src"), config("hash", 2))
    made.scale("hash", 4)
    assert acts.done == [("spawn", "hash#abc123-2"), ("spawn", "hash#abc123-3")]
    acts.done.clear()
    made.scale("hash", 1)
    assert acts.done == [("stop", "hash#abc123-3"), ("stop", "hash#abc123-2"),
                         ("stop", "hash#abc123-1")]  # fmt: skip
    assert made.policy.removed == {"hash#abc123-1", "hash#abc123-2", "hash#abc123-3"}
    made.policy.signal_stops(made.workers.values(), 0.0)
    assert sorted(a for a in acts.done if a[0] == "terminate") == [
        ("terminate", "hash#abc123-1"), ("terminate", "hash#abc123-2"),
        ("terminate", "hash#abc123-3")]  # fmt: skip
    assert made.workers["hash#abc123-0"].restart.wanted  # the one kept runs on
    # scaled up again before they exited: one of them is wanted again and restarts
    acts.done.clear()
    made.scale("hash", 2)
    assert acts.done == [("restart", "hash#abc123-1")]
    exit_all(made, acts)
    assert sorted(made.workers) == ["hash#abc123-0", "hash#abc123-1", "src"]
    assert ("spawn", "hash#abc123-1") in acts.done  # restarted once it exited
    assert made.workers["hash#abc123-1"].state is WorkerState.STARTING


def test_a_removed_replica_that_already_exited_is_forgotten_at_once() -> None:
    made, acts = table(config("hash", 2))
    stopped = made.workers["hash#abc123-1"]
    stopped.exited(0)
    made.scale("hash", 1)
    assert ("forget", "hash#abc123-1") in acts.done and "hash#abc123-1" not in made.workers


def test_reload_restarts_only_replicas_whose_config_changed_not_for_the_count() -> None:
    made, acts = table(config("hash", 2, queue_limit=100))
    assert made.replace_config(config("hash", 3, queue_limit=100)) == []  # the count alone
    assert acts.done == []
    assert made.replace_config(config("hash", 2, queue_limit=50)) == [
        "hash#abc123-0", "hash#abc123-1"]  # fmt: skip
    assert made.workers["hash#abc123-1"].config.queue_limit == 50
    assert made.workers["hash#abc123-1"].config.name == "hash#abc123-1"


def test_removing_a_pipeline_stops_every_replica() -> None:
    made, acts = table(config("hash", 2), config("src"))
    made.remove_pipeline("hash")
    assert acts.done == [("stop", "hash#abc123-0"), ("stop", "hash#abc123-1")]
    assert "hash" not in made.pipelines
    exit_all(made, acts)
    assert sorted(made.workers) == ["src"]


def test_a_pipeline_turned_into_replicas_is_its_replicas_while_its_old_process_exits() -> None:
    made, acts = table(config("hash"))
    made.remove_pipeline("hash")  # reload: the config now has "replicas"
    made.add_pipeline(config("hash", 2))
    assert "hash" in made.workers  # still exiting
    assert [h.name for h in made.handles_of("hash")] == ["hash#abc123-0", "hash#abc123-1"]
    exit_all(made, acts)
    assert sorted(made.workers) == ["hash#abc123-0", "hash#abc123-1"]


def test_reload_adds_removes_scales_and_restarts_what_changed() -> None:
    made, acts = table(config("keep"), config("gone"), config("hash", 2), config("edit", 2),
                       config("flip"))  # fmt: skip
    diff = made.reload([config("keep"), config("hash", 3), config("edit", 2, queue_limit=5),
                        config("flip", 2), config("fresh")])  # fmt: skip
    assert diff == {"added": ["fresh"], "removed": ["gone"], "changed": ["edit", "flip"],
                    "scaled": ["hash"], "unchanged": ["keep"]}  # fmt: skip
    assert ("spawn", "hash#abc123-2") in acts.done
    assert not any(n.startswith("hash#") for kind, n in acts.done if kind != "spawn")
    assert ("restart", "edit#abc123-0") in acts.done and ("stop", "flip") in acts.done
    assert made.pipelines["hash"].replicas == 3
    exit_all(made, acts)  # the restarted ones run their new config now
    assert "flip" not in made.workers and made.workers["edit#abc123-1"].config.queue_limit == 5
    made.scale("hash", 1)  # porchctl scale: the count holds while the config's does not change
    assert made.reload(list(made.pipelines.values()))["unchanged"] == [
        "edit", "flip", "fresh", "hash", "keep"]  # fmt: skip


def test_porch_run_warns_that_a_replicated_durable_outbox_is_not_replayed_next_run() -> None:
    from porch.config import Outbox
    from porch.scaling import run_problems

    durable = config("hash", 2, outbox=Outbox.DURABLE)
    [problem] = run_problems([durable, config("plain", outbox=Outbox.DURABLE), config("h2", 2)])
    assert (problem.file, problem.field) == ("/c/hash.json", "outbox")
    assert "porchd" in problem.message and "not replayed" in problem.message
