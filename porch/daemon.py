"""porchd: the long-lived supervisor of one host, answering porchctl on an owner-only socket.

It validates every config before starting anything, then runs the shared Supervisor in
FailureMode.RESTART and serves the control protocol of docs/supervisor-contract.md.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import zmq

from porch import __version__, logs
from porch.broker import NetworkPlan, daemon_origin
from porch.config import MAX_REPLICAS, PipelineConfig, Problem, has_errors, validate
from porch.daemon_views import (
    RATE_COUNTERS,
    encode_nodes,
    graph_nodes,
    remote_rows,
    with_daemon_figures,
)
from porch.errors import ConfigError, PorchError
from porch.graph import Node, to_dict
from porch.logfiles import LogFileSink
from porch.names import is_replica, pipeline_of
from porch.porchd_protocol import (
    STARTING_COMMANDS,
    Command,
    CommandError,
    ErrorCode,
    Reply,
    Result,
    answers,
    decode_request,
    encode_reply,
    error_reply,
    ok_reply,
)
from porch.rates import RateMeter
from porch.status import DaemonStatus, Snapshot, StatusReport
from porch.supervisor import FailureMode, Supervisor
from porch.web import TOKEN_FILE, DashboardServer, HttpPlan
from porch.worker_handle import WorkerHandle

log = logs.get("porch.daemon")

Args = Mapping[str, object]  # a request's args, checked by each command
SNAPSHOT_INTERVAL_S = 0.5  # how often the loop samples rates and publishes the HTTP snapshot


def expand_sources(sources: Sequence[str]) -> list[Path]:
    """Config files named by the arguments: files, folders (their *.json), or glob patterns."""
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            paths.extend(sorted(path.glob("*.json")))
        elif glob.has_magic(source):
            paths.extend(Path(p) for p in sorted(glob.glob(source)))
        else:
            paths.append(path)
    return paths


def load_all(sources: Sequence[str]) -> tuple[list[PipelineConfig], list[Problem]]:
    """Validate every config the sources name; raise ConfigError when any has an error."""
    paths = expand_sources(sources)
    if not paths:
        raise ConfigError([f"{', '.join(sources)}: no config files found"])
    configs, problems = validate(paths)
    if has_errors(problems):
        raise ConfigError([str(p) for p in problems])
    return configs, problems


class Daemon:
    """porchd: a Supervisor plus the porchctl control socket."""

    def __init__(
        self,
        sources: Sequence[str],
        control_path: Path,
        state_dir: Path,
        *,
        stop_timeout_s: float,
        network: NetworkPlan | None = None,
        http: HttpPlan | None = None,
    ) -> None:
        self.sources = list(sources)
        self.control_path = control_path
        self.state_dir = state_dir
        refuse_if_running(control_path)  # before discovery, HTTP or any worker starts
        configs, self.warnings = load_all(self.sources)
        # The HTTP snapshot: replaced whole by the loop, read by the HTTP thread; never mutated.
        self.snapshot: Snapshot | None = None
        self.rates = RateMeter(RATE_COUNTERS)
        self._next_snapshot_s = 0.0
        self.web = (DashboardServer(http, lambda: self.snapshot, state_dir / TOKEN_FILE)
                    if http is not None else None)  # fmt: skip
        self.sink = LogFileSink(state_dir / "logs")
        self.supervisor = Supervisor(
            configs,
            self.sink,
            mode=FailureMode.RESTART,
            stop_timeout_s=stop_timeout_s,
            state_dir=state_dir,
            network=network,
            origin=daemon_origin(state_dir),  # discovery's origin and the replicas' TAG
        )
        self.started_s = time.monotonic()
        self.socket: zmq.Socket[bytes] = self.supervisor.ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.commands: dict[Command, Callable[[Args], Result]] = {
            Command.PING: self._ping,
            Command.STATUS: lambda args: self.status_report().encode(),
            Command.STOP: self._stop,
            Command.START: self._start,
            Command.RESTART: self._restart,
            Command.RELOAD: self._reload,
            Command.SCALE: self._scale,
            Command.GRAPH: lambda args: encode_nodes(self._nodes()),
            Command.LOGS: self._logs,
        }

    # ---- socket --------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind the control socket (owner-only); refuse when another porchd answers there."""
        if self.control_path.exists():
            if answers(self.supervisor.ctx, self.control_path):
                raise _already_running(self.control_path)
            self.control_path.unlink()  # stale socket of a porchd that died
        old_umask = os.umask(0o077)
        try:
            self.socket.bind(f"ipc://{self.control_path}")
        finally:
            os.umask(old_umask)
        os.chmod(self.control_path, 0o600)
        self.supervisor.add_handler(self.socket, self._on_requests)
        self.supervisor.add_ticker(self._on_tick)

    def serve(self) -> int:
        """Run until stopped (porchctl stop, SIGTERM, SIGINT); exit code 0 (130 if forced)."""
        self.bind()
        self.supervisor.install_signals()
        if self.web is not None:
            self.web.start()
        log.info("porchd_started", pid=os.getpid(), control=str(self.control_path),
                 pipelines=len(self.supervisor.workers))  # fmt: skip
        try:
            code = self.supervisor.run()
        finally:
            if self.web is not None:
                self.web.close()
            self.socket.close(linger=0)
            self.control_path.unlink(missing_ok=True)
            self.sink.close()
        log.info("porchd_stopped", code=code)
        return 130 if code == 130 else 0

    def _on_requests(self) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            reply = self.handle(frames[-1])
            # the envelope (routing id, and a delimiter if the client sent one) goes back as is
            self.socket.send_multipart([*frames[:-1], encode_reply(reply)])

    def handle(self, data: bytes) -> Reply:
        """Answer one request: `{"id", "ok": true, "result"}` or an error with a code."""
        request_id: object = None
        try:
            request = decode_request(data)
            request_id = request.id
            if request.command in STARTING_COMMANDS and self.supervisor.stopping:
                raise CommandError(
                    ErrorCode.STOPPING,
                    f"porchd is stopping: nothing can {request.command.value} now; start porchd "
                    "again once it has stopped",
                )
            return ok_reply(request_id, self.commands[request.command](request.args))
        except CommandError as exc:
            known_id = exc.request_id if exc.request_id is not None else request_id
            return error_reply(known_id, exc.code, str(exc))
        except ConfigError as exc:
            return error_reply(request_id, ErrorCode.INVALID_CONFIG, "; ".join(exc.problems))
        except Exception as exc:  # the one catch-all of this loop: the daemon keeps answering
            log.exception("command_failed")
            return error_reply(request_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    # ---- commands ------------------------------------------------------------------------

    def _handles(self, args: Args, allow_empty: bool = False) -> list[WorkerHandle]:
        """The processes the names mean: a pipeline's name means all its replicas, a
        replica's process name (NAME#TAG-K) that one."""
        names = args.get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CommandError(ErrorCode.BAD_REQUEST, "names must be a list of pipeline names")
        if not names and not allow_empty:
            raise CommandError(ErrorCode.BAD_REQUEST, "name at least one pipeline")
        found: dict[str, WorkerHandle] = {}
        for name in names:
            handles = self.supervisor.handles_of(name)
            if not handles:
                raise self._unknown(name)
            found.update((h.name, h) for h in handles)
        return list(found.values())

    def _unknown(self, name: str) -> CommandError:
        known = ", ".join(sorted(self.supervisor.pipelines)) or "none"
        return CommandError(ErrorCode.UNKNOWN_PIPELINE, f"no pipeline {name!r} (known: {known})")

    def _ping(self, args: Args) -> Result:
        return {"pid": os.getpid(), "version": __version__}

    def status_report(self) -> StatusReport:
        """The `status` result: porchd, its pipelines with rates and log figures, remote ones."""
        broker = self.supervisor.broker
        daemon = DaemonStatus(
            pid=os.getpid(),
            control=str(self.control_path),
            state_dir=str(self.state_dir),
            uptime_s=round(time.monotonic() - self.started_s, 1),
            version=__version__,
            discovery=broker.status() if broker is not None else None,
            http=self.web.status() if self.web is not None else None,
        )
        pipelines = with_daemon_figures(self.supervisor.status(), self.sink.dropped, self.rates,
                                        time.monotonic())  # fmt: skip
        remote = remote_rows(broker, list(self.supervisor.workers))
        return StatusReport(daemon, tuple(pipelines), tuple(remote))

    # ---- rates and the HTTP snapshot -----------------------------------------------------

    def _on_tick(self, now: float) -> None:
        if now < self._next_snapshot_s:
            return
        self._next_snapshot_s = now + SNAPSHOT_INTERVAL_S
        for handle in self.supervisor.workers.values():
            # timed by the heartbeat's arrival, not by this sampling, so rates don't jitter
            at_s = handle.health.at_s if handle.health.at_s is not None else now
            self.rates.add(at_s, handle.name, handle.health.report.counters())
        self.rates.forget(self.supervisor.workers)
        if self.web is not None:
            reports = [(h.name, h.health.report) for h in self.supervisor.workers.values()]
            steps = {n: r.step_seconds for n, r in reports if r.step_seconds is not None}
            graph = to_dict(self._nodes())
            self.snapshot = Snapshot(self.status_report(), graph, steps)

    def _nodes(self) -> list[Node]:
        return graph_nodes(self.supervisor.workers.values(), self.supervisor.broker)

    def _stop(self, args: Args) -> Result:
        handles = self._handles(args, allow_empty=True)
        if not handles:
            self.supervisor.request_stop("porchctl stop")
            return {"stopping": sorted(self.supervisor.workers)}
        for handle in handles:
            self.supervisor.stop_worker(handle)
        return {"stopping": [h.name for h in handles]}

    def _start(self, args: Args) -> Result:
        handles = self._handles(args)
        for handle in handles:
            self.supervisor.start_pipeline(handle)
        return {"started": [h.name for h in handles]}

    def _restart(self, args: Args) -> Result:
        handles = self._handles(args)
        for handle in handles:
            self.supervisor.restart_pipeline(handle)
        return {"restarting": [h.name for h in handles]}

    def _reload(self, args: Args) -> Result:
        configs, self.warnings = load_all(self.sources)
        diff = self.supervisor.table.reload(configs)
        log.info("reloaded", **{k: v for k, v in diff.items() if k != "unchanged"})
        return diff

    def _scale(self, args: Args) -> Result:
        name, count = args.get("name"), args.get("replicas")
        if not isinstance(name, str):
            raise CommandError(ErrorCode.BAD_REQUEST, "name must be a pipeline's name")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_REPLICAS:
            raise CommandError(ErrorCode.BAD_REQUEST,
                               f"replicas must be a whole number from 1 to {MAX_REPLICAS}, "
                               f"got {count!r}")  # fmt: skip
        config = self.supervisor.pipelines.get(name)
        pipeline = pipeline_of(name)
        if config is None and is_replica(name) and pipeline in self.supervisor.pipelines:
            raise CommandError(ErrorCode.UNKNOWN_PIPELINE,
                               f"{name} is one replica of the pipeline {pipeline}: scale the "
                               f"pipeline (`porchctl scale {pipeline} {count}`)")  # fmt: skip
        if config is None:
            raise self._unknown(name)
        if not config.replicated:
            raise CommandError(ErrorCode.BAD_REQUEST,
                               f"{name} runs as one process, not as replicas: add \"replicas\": "
                               f"N to {config.path} and run `porchctl reload`")  # fmt: skip
        plan = self.supervisor.scale(name, count)
        return {"pipeline": name, "replicas": count,
                "started": self.supervisor.table.started_names(name, plan),
                "stopping": list(plan.remove)}  # fmt: skip

    def _logs(self, args: Args) -> Result:
        name = args.get("name")
        handles = self.supervisor.handles_of(name) if isinstance(name, str) else []
        if not handles:
            raise CommandError(ErrorCode.UNKNOWN_PIPELINE, f"no pipeline {name!r}")
        if len(handles) > 1:  # each replica writes its own log
            raise CommandError(ErrorCode.BAD_REQUEST,
                               f"{name} runs as {len(handles)} replicas, each with its own log; "
                               f"name one: {', '.join(h.name for h in handles)}")  # fmt: skip
        return {"path": str(self.sink.path_of(handles[0].name))}


def refuse_if_running(path: Path) -> None:
    """Raise PorchError when a porchd answers on `path` (bind() checks again, for a race)."""
    if not path.exists():
        return
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        if answers(ctx, path):
            raise _already_running(path)
    finally:
        ctx.destroy(linger=0)


def _already_running(path: Path) -> PorchError:
    return PorchError(
        f"another porchd is already running at {path}; stop it with `porchctl stop`, "
        "or start this one with --control OTHER_PATH"
    )
