"""Which worker processes a pipeline runs as, and what changing that takes (porch run, porchd,
`porchctl scale`, `porchctl reload`).

A config without `replicas` runs as one process named after the pipeline. A config with it
runs as replicas 0..N-1, each process named NAME#TAG-K (porch/names.py; TAG is the
supervisor's). Scaling starts the missing indexes below the new count at once and stops the
ones at or above it gracefully (highest first); the supervisor forgets a stopped one once it
has exited, so it leaves the directory and its senders hand what it did not acknowledge to the
others. A replica still stopping that is wanted again is restarted instead of replaced.
The decisions are pure functions over names and configs; ProcessTable keeps the supervisor's
processes and pipelines and carries them out through the supervisor's acts (TableActs).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from porch import logs
from porch.config import Outbox, PipelineConfig, Problem, Severity
from porch.names import replica_index, replica_name
from porch.supervision import SupervisionPolicy
from porch.worker_handle import WorkerHandle, fingerprint

log = logs.get("porch.supervisor")


def process_configs(config: PipelineConfig, tag: str, indexes: Iterable[int] | None = None
                    ) -> list[PipelineConfig]:  # fmt: skip
    """The processes a pipeline's config runs as: the config itself, or (it has `replicas`,
    even 1) replicas `indexes` (default 0..replicas-1), replica K's config named NAME#TAG-K
    with replica_of NAME."""
    if not config.replicated:
        return [config]
    wanted = range(config.replicas) if indexes is None else indexes
    return [process_config(config, replica_name(config.pipeline, tag, k)) for k in wanted]


def process_config(config: PipelineConfig, process_name: str) -> PipelineConfig:
    """The config the process `process_name` of `config`'s pipeline runs with."""
    if not config.replicated:
        return config
    return replace(config, name=process_name, replica_of=config.pipeline)


def run_problems(configs: Iterable[PipelineConfig]) -> list[Problem]:
    """What `porch run` warns of in replicated configs: its replicas get new names each run
    (TAG comes from the run's random id), so a durable outbox of one run is never replayed by
    the next (porchd's replicas keep their names: its TAG is its persistent daemon id)."""
    return [
        Problem(
            str(c.path),
            "outbox",
            f"is durable, but porch run names {c.name}'s replicas anew each run "
            f"({c.name}#TAG-K with a new TAG): what a replica still held when a run ended is "
            "not replayed by the next run; run it under porchd, whose replicas keep their "
            "names across restarts",
            Severity.WARNING,
        )
        for c in configs
        if c.replicated and c.outbox is Outbox.DURABLE
    ]


def handles_of(
    workers: Mapping[str, WorkerHandle], name: str, removing: Collection[str] = ()
) -> list[WorkerHandle]:
    """What a name in a command means: the process of that name, else every process (every
    replica, by index) of the pipeline of that name; none of those already being removed."""
    if name in workers and name not in removing:
        return [workers[name]]
    found = [h for h in workers.values() if h.replica_of == name and h.name not in removing]
    return sorted(found, key=lambda h: replica_index(h.name) or 0)


@dataclass(frozen=True)
class ScalePlan:
    """What scaling a pipeline's replicas to a count takes."""

    start: tuple[int, ...] = ()  # indexes to start as new processes
    revive: tuple[str, ...] = ()  # replicas still being removed that are wanted again
    remove: tuple[str, ...] = ()  # replicas at or above the count, highest first

    @property
    def empty(self) -> bool:
        """Whether nothing changes."""
        return not (self.start or self.revive or self.remove)


def scale_plan(names: Iterable[str], removing: Collection[str], count: int) -> ScalePlan:
    """How a pipeline whose replicas are `names` (some of them `removing`) gets to `count`."""
    by_index = {k: n for n in names if (k := replica_index(n)) is not None}
    kept = [k for k in sorted(by_index) if k < count]
    over = [k for k in sorted(by_index, reverse=True) if k >= count]
    return ScalePlan(
        start=tuple(k for k in range(count) if k not in by_index),
        revive=tuple(by_index[k] for k in kept if by_index[k] in removing),
        remove=tuple(by_index[k] for k in over if by_index[k] not in removing),
    )


def needs_restart(handle: WorkerHandle, config: PipelineConfig) -> bool:
    """Whether a process must restart to run `config` (its pipeline's new config): the config
    or its scripts changed, other than the replica count (scaling leaves the others alone)."""
    wanted = replace(process_config(config, handle.name), replicas=handle.config.replicas)
    return wanted != handle.config or fingerprint(wanted) != handle.digest


class TableActs(Protocol):
    """What the table asks of the supervisor (supervisor.py Supervisor)."""

    def spawn(self, handle: WorkerHandle) -> None:
        """Start a new worker process for the handle."""

    def restart_pipeline(self, handle: WorkerHandle) -> None:
        """Stop its worker gracefully, then start it again."""

    def stop_worker(self, handle: WorkerHandle) -> None:
        """Stop its worker gracefully; never restarted."""

    def drop(self, handle: WorkerHandle) -> None:
        """Forget a process that has exited (it leaves the directory)."""


class ProcessTable:
    """The supervisor's pipelines (as configured) and worker processes (by process name)."""

    def __init__(self, configs: Sequence[PipelineConfig], tag: str, policy: SupervisionPolicy,
                 acts: TableActs) -> None:  # fmt: skip
        self.tag = tag  # its replicas' process names: NAME#TAG-K
        self.policy = policy
        self.acts = acts
        self.pipelines = {c.name: c for c in configs}
        self.workers = {p.name: self._handle(p) for c in configs
                        for p in process_configs(c, tag)}  # fmt: skip

    def _handle(self, config: PipelineConfig) -> WorkerHandle:
        return WorkerHandle(config, self.policy.new_book(config))

    def handles_of(self, name: str) -> list[WorkerHandle]:
        """The processes a name in a command means (module function handles_of)."""
        return handles_of(self.workers, name, self.policy.removed)

    def add_pipeline(self, config: PipelineConfig) -> None:
        """Add a pipeline (reload) and start its processes."""
        self.pipelines[config.name] = config
        for process in process_configs(config, self.tag):
            self._add_process(process)

    def _add_process(self, config: PipelineConfig) -> None:
        handle = self._handle(config)
        self.workers[config.name] = handle
        self.acts.spawn(handle)

    def remove_pipeline(self, name: str) -> None:
        """Stop a pipeline's processes and forget them once they have exited (reload)."""
        del self.pipelines[name]
        for handle in self.handles_of(name):
            self._remove_process(handle)

    def _remove_process(self, handle: WorkerHandle) -> None:
        handle.restart.respawn = False
        self.acts.stop_worker(handle)
        if handle.alive:
            self.policy.removed.add(handle.name)  # forgotten once it has exited
        else:
            self.acts.drop(handle)

    def replace_config(self, config: PipelineConfig) -> list[str]:
        """A pipeline's config or scripts changed (reload): restart the processes whose config
        or scripts differ (not the count) with the new ones; return their names."""
        self.pipelines[config.name] = config
        restarted = []
        for handle in self.handles_of(config.name):
            if needs_restart(handle, config):
                handle.config = process_config(config, handle.name)
                handle.restart.tracker = self.policy.new_book(config).tracker
                self.acts.restart_pipeline(handle)
                restarted.append(handle.name)
        return restarted

    def scale(self, pipeline: str, count: int) -> ScalePlan:
        """Run `count` replicas of a replicated pipeline: start the missing indexes at once,
        stop the ones at or above `count` gracefully (forgotten once they have exited)."""
        config = self.pipelines[pipeline]
        names = [h.name for h in self.workers.values() if h.pipeline == pipeline]
        plan = scale_plan(names, self.policy.removed, count)
        for name in plan.revive:  # wanted again before it exited: restarted, not replaced
            self.policy.removed.discard(name)
            self.acts.restart_pipeline(self.workers[name])
        for process in process_configs(config, self.tag, plan.start):
            self._add_process(process)
        for name in plan.remove:
            self._remove_process(self.workers[name])
        if not plan.empty:
            log.info("pipeline_scaled", pipeline=pipeline, replicas=count,
                     started=self.started_names(pipeline, plan),
                     stopping=list(plan.remove))  # fmt: skip
        return plan

    def started_names(self, pipeline: str, plan: ScalePlan) -> list[str]:
        """The processes a scale plan starts (or keeps from stopping)."""
        return [*plan.revive, *(replica_name(pipeline, self.tag, k) for k in plan.start)]

    def reload(self, configs: Sequence[PipelineConfig]) -> dict[str, list[str]]:
        """Apply re-read configs (porchctl reload): add, remove, scale (a changed `replicas`
        alone: the replicas that stay keep running) and restart what changed; the pipelines'
        names by what happened to them."""
        new = {c.name: c for c in configs}
        current = dict(self.pipelines)
        diff: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "scaled": [],
                                      "unchanged": []}  # fmt: skip
        for name in sorted(set(current) - set(new)):
            self.remove_pipeline(name)
            diff["removed"].append(name)
        for name, config in sorted(new.items()):
            old = current.get(name)
            if old is None:
                self.add_pipeline(config)
                diff["added"].append(name)
            elif old.replicated != config.replicated:  # one process <-> replicas: new names
                self.remove_pipeline(name)
                self.add_pipeline(config)
                diff["changed"].append(name)
            else:
                diff[self._reload_one(old, config)].append(name)
        return diff

    def _reload_one(self, old: PipelineConfig, config: PipelineConfig) -> str:
        """Apply a pipeline's re-read config: its replica count first (from the new config),
        then restart the processes whose config or scripts changed."""
        scaled = config.replicated and config.replicas != old.replicas
        self.pipelines[config.name] = config  # new replicas start with it
        if scaled:
            self.scale(config.name, config.replicas)
        if self.replace_config(config):
            return "changed"
        return "scaled" if scaled else "unchanged"
