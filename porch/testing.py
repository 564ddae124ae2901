"""Run pipelines in-process, without sockets or processes: for pytest.

    from porch.testing import run_pipeline, run_graph

    def test_doubles():
        result = run_pipeline("examples/diamond/pipeline_b.json",
                              inputs=[{"pipeline_a": 1}, {"pipeline_a": 2}])
        assert result.outputs == [2, 4]

Scripts run through the same script host as a worker (porch.host): each script its own module,
top level once, `step()` chained per iteration (async ones awaited), `porch.SKIP`, `porch.Stop`,
`porch.stop()`, `sys.exit()`, `delta_time` and the `end()` hooks behave as under `porch run`;
`on_error` decides what a raising step() does; each output goes through the config's
serializer (what is not sendable fails as it would in a worker, and a target gets the decoded
copy). What differs: nothing is sent anywhere, async steps are awaited one at a time (outputs
are the same: a worker hands them on in input order), and a dead-lettered input is recorded in
the result rather than written to the dead-letter file.

`run_graph` runs a set of configs end to end: sources produce until they stop (or for
`iterations`), values flow by pipeline name to their targets, joins pair values as a worker
does (by source iteration when the sources share an origin, else one of each in order; with
`fan_in: any` whatever is there), and each pipeline finishes when its input can no longer form
a set. This module lives in porch (not workers): it must run without any of the worker's
sockets, and porch never imports workers.
"""

from __future__ import annotations

import contextlib
import io
import sys
import types
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from porch.config import FanIn, OnError, PipelineConfig, load_config
from porch.errors import ScriptError
from porch.host import ScriptHost
from porch.serializers import SerializationError, get
from porch.stream import SKIP, Stop, clear_stop_request, stop_requested

__all__ = [
    "GraphResult",
    "PipelineFailed",
    "PipelineResult",
    "run_graph",
    "run_pipeline",
]

MAX_ITERATIONS = 100_000  # a source that never stops, run without `iterations=`


@dataclass
class Failure:
    """An input whose step() raised (or whose output could not be sent) under on_error skip
    or dead-letter: the input and the error (message and the user's traceback)."""

    input: Any
    error: ScriptError


@dataclass
class PipelineResult:
    """What one pipeline did in-process."""

    name: str
    outputs: list[Any] = field(default_factory=list)  # sent to its targets, in order
    stdout: str = ""  # what its scripts printed: top level, step() and end()
    iterations: int = 0  # iterations that ran to their end (SKIP included, errors not)
    skipped: int = 0  # iterations that returned porch.SKIP (nothing sent)
    failures: list[Failure] = field(default_factory=list)  # on_error skip / dead-letter
    end_errors: list[ScriptError] = field(default_factory=list)  # end() hooks that raised
    stopped: bool = False  # the stream ended itself: porch.Stop, porch.stop() or sys.exit(0)
    unprocessed: int = 0  # inputs left when the stream ended
    modules: dict[str, types.ModuleType] = field(default_factory=dict)  # file stem -> module

    @property
    def lines(self) -> list[str]:
        """`stdout` as lines."""
        return self.stdout.splitlines()

    @property
    def dead_letters(self) -> list[Failure]:
        """The failures (a worker with on_error dead-letter writes them to its file)."""
        return self.failures


class PipelineFailed(Exception):
    """A step() raised under on_error stop (or a script failed to load, or end() raised):
    the pipeline failed as its worker would. `result` holds what it did until then."""

    def __init__(self, error: ScriptError, result: PipelineResult) -> None:
        super().__init__(f"pipeline {result.name} failed: {error}")
        self.error = error
        self.result = result


@dataclass
class GraphResult:
    """Each pipeline's result by name (`result["pipeline_d"].outputs`)."""

    pipelines: dict[str, PipelineResult]

    def __getitem__(self, name: str) -> PipelineResult:
        return self.pipelines[name]

    def outputs(self) -> dict[str, list[Any]]:
        """Every pipeline's outputs by name."""
        return {name: result.outputs for name, result in self.pipelines.items()}


# ---- one pipeline ---------------------------------------------------------------------------


class _Fake:
    """A clock that moves `step_s` per call after the first: delta_time is exactly step_s."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


class _Runner:
    """One pipeline's scripts in-process: loads them, runs iterations, runs end()."""

    def __init__(self, config: PipelineConfig, step_interval_s: float | None) -> None:
        self.config = config
        self.host = ScriptHost(config.scripts, config.name)
        if step_interval_s is not None:
            self.host.clock = _Fake(step_interval_s)
        self.serializer = get(config.serializer)
        self.result = PipelineResult(config.name)
        self._out = io.StringIO()
        self.loaded = False
        self.ended = False

    @contextlib.contextmanager
    def _captured(self) -> Iterator[None]:
        with contextlib.redirect_stdout(self._out):
            try:
                yield
            finally:
                self.result.stdout = self._out.getvalue()

    def load(self) -> None:
        with self._captured():
            try:
                self.host.load()
            except Stop:  # sys.exit(0) at the top level: the stream ends before it starts
                self.result.stopped = self.ended = True
            except ScriptError as exc:
                self.ended = True
                raise PipelineFailed(exc, self.result) from None
            finally:
                self.loaded = True
                self.result.modules = {s.path.stem: s.module for s in self.host.scripts}

    def iterate(self, inputs: Any) -> tuple[bool, Any]:
        """Run one iteration: (True, the output as a target gets it) or (False, None) when
        nothing is sent (SKIP, a failure under skip / dead-letter, the stream's end)."""
        result = self.result
        clear_stop_request()
        with self._captured():
            try:
                value = self.host.step(inputs)
                if value is not SKIP:
                    value = self._sendable(value)
            except Stop:
                result.stopped = self.ended = True
                return False, None
            except ScriptError as exc:
                if self.config.on_error is OnError.STOP:
                    self.ended = True
                    raise PipelineFailed(exc, result) from None
                result.failures.append(Failure(inputs, exc))
                return False, None
        result.iterations += 1
        if stop_requested():
            clear_stop_request()
            result.stopped = self.ended = True
        if value is SKIP:
            result.skipped += 1
            return False, None
        result.outputs.append(value)
        return True, value

    def _sendable(self, value: Any) -> Any:
        """What a target would receive: the value through the serializer, or a ScriptError
        naming the script (as a worker fails an unsendable output)."""
        try:
            return self.serializer.loads(self.serializer.dumps(value))
        except SerializationError as exc:
            raise ScriptError(f"{self.host.output_origin()}: step() returned {exc}") from None

    def end(self) -> None:
        with self._captured():
            self.result.end_errors = self.host.end()
        self.host.close()


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """Leave sys.path and porch.stop()'s flag as they were (the host adds script folders)."""
    saved = list(sys.path)
    clear_stop_request()
    try:
        yield
    finally:
        sys.path[:] = saved
        clear_stop_request()


def _config(config: str | Path | PipelineConfig) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else load_config(config)


def run_pipeline(
    config: str | Path | PipelineConfig,
    inputs: Iterable[Any] | None = None,
    *,
    iterations: int | None = None,
    sources: Sequence[str] = (),
    step_interval_s: float | None = None,
) -> PipelineResult:
    """Run one pipeline's scripts in-process and return what it did.

    A pipeline with sources gets `inputs`, one per iteration, each the dict a worker would
    pass: keyed by source pipeline name (`{"pipeline_a": 1}`). A source (no
    `source_pipeline_count`) gets None each iteration, until it stops by itself or for
    `iterations`. With `fan_in: any`, name the `sources`: its first iteration gets all of them
    None, and an input missing one gets None for it. `step_interval_s` makes `delta_time`
    exactly that after the first iteration (0.0), else it is the real time between steps.
    The end() hooks run at the end, as in a worker; a failure under on_error stop raises
    PipelineFailed (with `.result`) after them.
    """
    cfg = _config(config)
    runner = _Runner(cfg, step_interval_s)
    with _isolated():
        try:
            runner.load()
            if cfg.source_pipeline_count == 0:
                _run_source(runner, inputs, iterations)
            else:
                _run_stage(runner, list(inputs or ()), sources, iterations)
        except PipelineFailed:
            runner.end()
            raise
        runner.end()
    if runner.result.end_errors:
        raise PipelineFailed(runner.result.end_errors[0], runner.result)
    return runner.result


def _run_source(runner: _Runner, inputs: Iterable[Any] | None, iterations: int | None) -> None:
    if inputs is not None:
        raise ValueError(f"{runner.config.name} is a source (no source_pipeline_count): it gets "
                         "no inputs; pass iterations= to bound it")  # fmt: skip
    bound = iterations if iterations is not None else MAX_ITERATIONS
    while not runner.ended and runner.result.iterations < bound:
        runner.iterate(None)
    if not runner.ended and iterations is None:
        raise RuntimeError(f"source {runner.config.name} ran {MAX_ITERATIONS:,} iterations "
                           "without stopping; pass iterations=N")  # fmt: skip


def _run_stage(
    runner: _Runner, inputs: list[Any], sources: Sequence[str], iterations: int | None
) -> None:
    any_input = runner.config.fan_in is FanIn.ANY
    if any_input and sources:
        runner.iterate(dict.fromkeys(sources))
    for index, value in enumerate(inputs):
        if runner.ended or (iterations is not None and runner.result.iterations >= iterations):
            runner.result.unprocessed = len(inputs) - index
            return
        if any_input and sources and isinstance(value, dict):
            value = {name: value.get(name) for name in sources}
        runner.iterate(value)


# ---- a graph --------------------------------------------------------------------------------

Origin = frozenset[tuple[str, int]]  # (pipeline, seq) of the source iterations a value comes from
MARKER = object()  # a filtered value's place (a worker's skip marker)


class _Node:
    """One pipeline of a graph: its runner, its input queues by source, its origin stamps."""

    def __init__(self, runner: _Runner, stamps: bool) -> None:
        self.runner = runner
        self.name = runner.config.name
        self.stamps = stamps  # a source or a fan_in any stage: its outputs get its own origin
        self.queues: dict[str, deque[tuple[Any, Origin]]] = {}
        self.ended_sources: set[str] = set()
        self.seq = 0
        self.aligned: bool | None = None  # None until every source has sent a first value
        self.feed: deque[Any] | None = None  # given source values (run_graph's `inputs`)
        self.started = False  # a fan_in any stage has run its first iteration (all None)

    @property
    def config(self) -> PipelineConfig:
        return self.runner.config

    def exhausted(self) -> bool:
        """Whether no input set can form again (as workers/scheduler.FanIn.exhausted)."""
        if self.config.fan_in is FanIn.ANY:
            return len(self.ended_sources) >= len(self.queues) and not any(self.queues.values())
        return any(not self.queues[name] for name in self.ended_sources)

    def take(self) -> tuple[Any, Origin, bool] | None:
        """The next input set: (values by source, their origin, whether it is a marker)."""
        queues = self.queues
        if self.config.fan_in is FanIn.ANY:
            for queue in queues.values():
                if queue and queue[0][0] is MARKER:
                    queue.popleft()  # a marker leaves alone, nothing to join
            if not any(queues.values()):
                return None
            taken = {name: q.popleft() for name, q in queues.items() if q}
            values = {name: taken[name][0] if name in taken else None for name in queues}
            return values, _union(item[1] for item in taken.values()), False
        if self.aligned is None:
            if not all(queues.values()):
                return None
            self.aligned = _shares_origin(q[0][1] for q in queues.values())
        if not self.aligned:
            for queue in queues.values():
                while queue and queue[0][0] is MARKER:
                    queue.popleft()  # FIFO pairing: a marker leaves alone
        if not all(queues.values()):
            return None
        taken = {name: q.popleft() for name, q in queues.items()}
        marked = any(item[0] is MARKER for item in taken.values())
        values = {name: item[0] for name, item in taken.items()}
        return values, _union(item[1] for item in taken.values()), marked


def _union(origins: Iterable[Origin]) -> Origin:
    out: frozenset[tuple[str, int]] = frozenset()
    for origin in origins:
        out |= origin
    return out


def _shares_origin(origins: Iterable[Origin]) -> bool:
    """Whether the first values of every source derive from a common source pipeline."""
    common: set[str] | None = None
    for origin in origins:
        names = {pipeline for pipeline, _ in origin}
        common = names if common is None else common & names
    return bool(common)


def run_graph(
    configs: Iterable[str | Path | PipelineConfig],
    *,
    iterations: int | None = None,
    inputs: dict[str, Iterable[Any]] | None = None,
    step_interval_s: float | None = None,
) -> GraphResult:
    """Run a set of configs in-process end to end; each pipeline's result by name.

    Sources run until they stop by themselves, or for `iterations` each (`porch run
    --iterations`). `inputs` replaces a source's scripts by a list of values it sends
    (`inputs={"pipeline_a": [1, 2, 3]}`). Pipelines take turns, one iteration each, in config
    order, so values move through the graph a step at a time. Every pipeline's end() hooks run
    when its stream ends. A step() failing under on_error stop raises PipelineFailed (the
    other pipelines' end() hooks have run).
    """
    cfgs = [_config(c) for c in configs]
    feeds = {name: deque(values) for name, values in (inputs or {}).items()}
    nodes = _graph(cfgs, feeds, step_interval_s)
    with _isolated():
        try:
            for node in nodes.values():
                if node.feed is None:
                    node.runner.load()
                if node.runner.ended:
                    _finish(node, nodes)
            while _turn(nodes, iterations):
                pass
        finally:
            for node in nodes.values():
                if node.runner.loaded:
                    node.runner.end()
                    node.runner.loaded = False
    for node in nodes.values():
        if node.runner.result.end_errors:
            raise PipelineFailed(node.runner.result.end_errors[0], node.runner.result)
    return GraphResult({name: node.runner.result for name, node in nodes.items()})


def _graph(
    cfgs: list[PipelineConfig], feeds: dict[str, deque[Any]], step_interval_s: float | None
) -> dict[str, _Node]:
    nodes: dict[str, _Node] = {}
    for cfg in cfgs:
        if cfg.name in nodes:
            raise ValueError(f"two configs are named {cfg.name!r}")
        stamps = cfg.source_pipeline_count == 0 or cfg.fan_in is FanIn.ANY
        nodes[cfg.name] = _Node(_Runner(cfg, step_interval_s), stamps)
    for name, feed in feeds.items():
        node = nodes.get(name)
        if node is None or node.config.source_pipeline_count:
            raise ValueError(f"inputs: {name!r} is not a source pipeline of this graph")
        node.feed = feed
    for cfg in cfgs:
        for target in cfg.target_pipeline_names:
            if target in nodes:
                nodes[target].queues[cfg.name] = deque()
    for node in nodes.values():
        expected = node.config.source_pipeline_count
        if len(node.queues) != expected:
            given = ", ".join(node.queues) or "none"
            raise ValueError(f"{node.name}: source_pipeline_count is {expected}, but "
                             f"{len(node.queues)} of the given configs target it ({given}); "
                             "it would wait for ever")  # fmt: skip
    return nodes


def _turn(nodes: dict[str, _Node], iterations: int | None) -> bool:
    """One iteration of every pipeline that can run one; False once none can."""
    progress = False
    for node in nodes.values():
        if node.runner.ended:
            continue
        if not node.queues:
            progress |= _source_turn(node, nodes, iterations)
            continue
        if node.config.fan_in is FanIn.ANY and not node.started:
            node.started = True  # its first iteration: every source None (a loop's start)
            _run(node, nodes, dict.fromkeys(node.queues), frozenset())
            progress = True
            continue
        taken = node.take()
        if taken is not None:
            values, origin, marked = taken
            if marked:
                _pass_marker(node, nodes, origin)
            else:
                _run(node, nodes, values, origin)
            progress = True
        elif node.exhausted():
            _finish(node, nodes)
            progress = True
    return progress


def _source_turn(node: _Node, nodes: dict[str, _Node], iterations: int | None) -> bool:
    result = node.runner.result
    if iterations is not None and result.iterations >= iterations:
        _finish(node, nodes)
        return True
    if node.feed is not None:
        if not node.feed:
            result.stopped = True
            _finish(node, nodes)
            return True
        value = node.feed.popleft()
        result.iterations += 1
        result.outputs.append(value)
        _send(node, nodes, value, frozenset())
        return True
    if result.iterations >= MAX_ITERATIONS:
        raise RuntimeError(f"source {node.name} ran {MAX_ITERATIONS:,} iterations without "
                           "stopping; pass iterations=N")  # fmt: skip
    _run(node, nodes, None, frozenset())
    return True


def _run(node: _Node, nodes: dict[str, _Node], inputs: Any, origin: Origin) -> None:
    try:
        sent, value = node.runner.iterate(inputs)
    except PipelineFailed:
        _finish(node, nodes)
        raise
    if sent:
        _send(node, nodes, value, origin)
    else:
        _pass_marker(node, nodes, origin)
    if node.runner.ended:
        _finish(node, nodes)


def _send(node: _Node, nodes: dict[str, _Node], value: Any, origin: Origin) -> None:
    if node.stamps:
        node.seq += 1
        origin = frozenset({(node.name, node.seq)})
    for target in node.config.target_pipeline_names:
        if target in nodes and not nodes[target].runner.ended:
            nodes[target].queues[node.name].append((value, origin))


def _pass_marker(node: _Node, nodes: dict[str, _Node], origin: Origin) -> None:
    """Nothing sent for `origin`: say so, so a join drops the partner (a worker's skip
    marker); a stamping stage's own ids are never joined on."""
    if node.stamps or not origin:
        return
    for target in node.config.target_pipeline_names:
        if target in nodes and not nodes[target].runner.ended:
            nodes[target].queues[node.name].append((MARKER, origin))


def _finish(node: _Node, nodes: dict[str, _Node]) -> None:
    """`node`'s stream ended: its targets learn it; its end() hooks run (in run_graph)."""
    runner = node.runner
    runner.ended = True
    runner.result.unprocessed = sum(
        1 for q in node.queues.values() for item in q if item[0] is not MARKER
    )
    for queue in node.queues.values():
        queue.clear()
    for target in node.config.target_pipeline_names:
        if target in nodes:
            nodes[target].ended_sources.add(node.name)
    if runner.loaded:
        runner.end()
        runner.loaded = False
