"""Entry point of a worker process: `python -m workers --config FILE --control ENDPOINT`
(`--replica NAME#TAG-K`: one replica of a replicated pipeline)."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from porch import logs, reaper
from porch.config import PipelineConfig, load_config
from porch.errors import PorchError
from porch.names import is_replica, pipeline_of, process_name_problem
from workers.signals import PARENT_DEATH_SIGNAL
from workers.worker import STOP_TIMEOUT_S, Worker, WorkerOptions

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int | None) -> None:
    """Ask Linux to signal us when the supervisor dies, so no worker is left orphaned."""
    if parent_pid is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)
    except OSError:
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), PARENT_DEATH_SIGNAL)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The worker's command line (internal: porch's supervisor writes it)."""
    return _PARSER.parse_args(argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workers")
    parser.add_argument("--config", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--bind-host", default="127.0.0.1")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--key-file", type=Path, default=None)  # a path, never the key itself
    parser.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT_S)
    parser.add_argument("--ipc-dir", type=Path, default=None)  # the supervisor's run folder
    parser.add_argument("--replica", default=None)  # its process name NAME#TAG-K: one replica
    return parser


# Made once, on import: a worker forked from the fork server finds it built in the pages it
# shares with the template (building one in each worker copied ~0.7 MB of them: argparse
# touches many objects).
_PARSER = _parser()


def as_replica(config: PipelineConfig, process_name: str | None) -> PipelineConfig:
    """The config a worker runs with: as loaded, or for `--replica NAME#TAG-K` one replica of
    it (the process name is its routing id, directory entry, files and log prefix; its
    pipeline, config.pipeline, stays NAME). A process name of another pipeline is refused."""
    if process_name is None:
        return config
    problem = process_name_problem(process_name)
    if problem is None and (
        not is_replica(process_name) or pipeline_of(process_name) != config.name
    ):
        problem = f"is not a replica of {config.name!r} (NAME#TAG-K with NAME {config.name!r})"
    if problem is not None:
        raise PorchError(f"--replica {process_name!r}: {problem}")
    return replace(config, name=process_name, replica_of=config.name)


def main(argv: list[str] | None = None) -> int:
    """Run one pipeline worker until its stream ends, it is stopped, or it fails."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure_once()
    try:
        config = as_replica(load_config(args.config), args.replica)
    except PorchError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    options = WorkerOptions(
        control=args.control,
        bind_host=args.bind_host,
        iterations=args.iterations,
        parent_pid=args.parent_pid,
        state_dir=args.state_dir,
        key_file=args.key_file,
        stop_timeout_s=args.stop_timeout,
        ipc_dir=args.ipc_dir,
    )
    try:
        worker = Worker(config, options)
    except PorchError as exc:  # e.g. an unreadable key file
        sys.stderr.write(f"{exc}\n")
        return 2
    worker.install_signals()
    _die_with_parent(args.parent_pid)
    reaper.become_subreaper()  # what the scripts start stays below us, even in a new session
    try:
        return worker.run()
    finally:
        reaper.kill_all(reaper.descendants())  # nothing a script started outlives its worker
        if args.parent_pid is not None and os.getppid() != args.parent_pid:
            # Orphaned: nobody will reap our process group; take the scripts' children along.
            os.killpg(os.getpgrp(), signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
