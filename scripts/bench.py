"""Benchmarks: Porch against baselines measured in the same run (issue 7's table, issue 6's acks).

Run it as `make bench` (or `.venv/bin/python scripts/bench.py [--quick] [--only NAME]...`).

Two registries drive everything:

- `BENCHMARKS`: measurements. A `Benchmark` is a function `(Settings) -> Sample` that runs one
  workload once and returns named metrics (`{"rate": 123456.0}`, `{"p50_ms": ..., "p99_ms": ...}`).
  Each runs `repeats` times (fewer for slow ones), interleaved round by round with the others
  so machine noise hits them alike; a metric's figure is the median over its runs.
- `ROWS`: the results table. A `Row` names a metric (`"bench.metric"`), optionally a baseline
  metric (the row's result is then the ratio of the two medians), and a goal (`>=`/`<=`). Rows
  without a goal are printed for information.

To add a benchmark: write the function, append a `Benchmark` to `BENCHMARKS` and a `Row` to
`ROWS`. Child processes of this file run hidden sub-commands (see `CHILDREN`).

Exit status: 0 when every benchmark ran cleanly, even if rows MISS their goal; 1 when a
benchmark failed (crash, hang/timeout, lost messages, processes left running); 2 on usage errors.
Results go to stdout (table), `bench-results/bench.json` and `bench-results/bench.png`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import platform
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil
import zmq

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPEATS = 3
DEFAULT_OUT = ROOT / "bench-results" / "bench.json"
IDLE_TIMEOUT_S = 10.0  # a consumer waits this long for the next message once a stream started
KILL_GRACE_S = 5.0
MB = 1_000_000
# Porch's network settings that must not leak from the user's environment into a benchmark.
NETWORK_VARIABLES = ("PORCH_INTERFACE", "PORCH_PEERS", "PORCH_KEY_FILE", "PORCH_BROADCAST",
                     "PORCH_BEACON_INTERVAL", "PORCH_DISCOVERY_PORT", "PORCH_PREFS")  # fmt: skip


class BenchError(Exception):
    """A run that could not produce a number: crash, hang, loss, unparseable output."""


class BenchSkipped(Exception):
    """A benchmark this machine cannot run (e.g. network namespaces without root): its rows
    say `skipped`, and the run is not failed for it."""


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; `--quick` shrinks them all."""

    n: int = 500_000  # small messages per throughput run
    latency_rate: float = 200.0  # msgs/s of the latency runs
    latency_warmup_s: float = 1.0  # from the first arrival; the start-up backlog is not timed
    latency_s: float = 3.0  # measured seconds after the warm-up
    large_bytes: int = 100 * MB  # one array of the large-message runs
    large_count: int = 15  # arrays per large-message run
    large_skip: int = 5  # arrivals not timed: more than a start-up backlog can hold (limit 4)
    chains: int = 64  # source->sink chains of the many-pipelines run (2 pipelines each)
    linked_deadline_s: float = 60.0  # slower than this to link is an error, not a MISS
    settle_s: float = 2.0  # after everything linked, before idleness is measured
    idle_s: float = 5.0  # how long idle CPU is measured
    cut_s: float = 30.0  # how long the link between two namespace hosts is cut (reconnect)
    async_n: int = 10_000  # messages through the async stage with concurrency 100
    slow_n: int = 300  # messages through a stage that takes 10 ms each, one at a time
    starts: int = 10  # `porch run`s in a row of the start-stall run (issue 12)
    start_chains: int = 32  # source->sink chains of each of those starts (64 pipelines)
    thousand: int = 1000  # pipelines under one porchd (issue 18)
    thousand_deadline_s: float = 180.0  # slower than this is an error, not a MISS
    cpu_n: int = 4000  # messages through the 1 ms CPU stage, replicas 2 and replicas 1 (issue 13)


FULL = Sizes()
QUICK = Sizes(n=20_000, latency_s=1.0, large_count=8, chains=4, settle_s=1.0, idle_s=2.0,
              cut_s=10.0, async_n=3000, slow_n=100, starts=2, start_chains=4,
              thousand=40, cpu_n=1200)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """What every benchmark run needs to know."""

    sizes: Sizes
    timeout_s: float  # per throughput run
    workdir: Path
    pythonpath: str | None = None  # an exported runtime (--commit) that `porch` must import


@dataclass(frozen=True)
class Sample:
    """One run of one benchmark: its named metrics, and what was delivered of what was sent."""

    metrics: dict[str, float]
    count: int = 0
    expected: int = 0
    notes: tuple[str, ...] = ()  # warnings the runtime logged (not errors of the benchmark)
    round: int = 0  # which round of the interleaved runs produced it (set by the driver)

    @property
    def lost(self) -> int:
        """Messages sent but never seen by the consumer."""
        return self.expected - self.count


@dataclass(frozen=True)
class Benchmark:
    """One named workload; runs `repeats` times (None: the driver's --repeats)."""

    name: str
    title: str
    run: Callable[[Settings], Sample]
    repeats: int | None = None


@dataclass(frozen=True)
class Row:
    """One line of the results table: a metric, an optional baseline, an optional goal.

    `metric` and `baseline` are "benchmark.metric". With a baseline the row's result is
    median(metric) / median(baseline), a ratio; without one it is median(metric) in `unit`.
    """

    label: str
    metric: str
    unit: str
    baseline: str | None = None
    baseline_label: str = ""
    op: str = ""  # ">=" or "<=", or "" for a row printed for information
    goal: float | None = None
    issue: int = 7


@dataclass
class Outcome:
    """Everything one benchmark produced over all its repeats."""

    bench: Benchmark
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str = ""  # why this machine could not run it

    def notes(self) -> dict[str, int]:
        """Each distinct runtime warning (numbers replaced by N), with how many runs logged it."""
        counts: dict[str, int] = {}
        for sample in self.samples:
            for note in dict.fromkeys(re.sub(r"\d+(?:\.\d+)?", "N", n) for n in sample.notes):
                counts[note] = counts.get(note, 0) + 1
        return counts

    def median(self, metric: str) -> float | None:
        """Median of `metric` over the runs that produced a number."""
        values = [s.metrics[metric] for s in self.samples if metric in s.metrics]
        return statistics.median(values) if values else None

    def by_round(self, metric: str) -> dict[int, float]:
        """`metric` of each round that produced it."""
        return {s.round: s.metrics[metric] for s in self.samples if metric in s.metrics}

    def metric_names(self) -> list[str]:
        """Every metric any run reported, in first-seen order."""
        return list(dict.fromkeys(m for s in self.samples for m in s.metrics))


# ---------------------------------------------------------------- child processes


def free_udp_port() -> int:
    """A UDP port nothing on this host uses right now (Porch's discovery port for one run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def porch_env(workdir: Path) -> dict[str, str]:
    """Environment of a `porch` child: a private discovery port and no user prefs, so a
    benchmark never sees (or disturbs) other Porch runs on this host; unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k not in NETWORK_VARIABLES}
    env["PORCH_DISCOVERY_PORT"] = str(free_udp_port())
    env["PORCH_PREFS"] = str(workdir / "no-prefs.toml")
    env["PORCH_STATE_DIR"] = str(workdir / "state")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def settings_env(settings: Settings) -> dict[str, str]:
    """`porch_env`, plus the exported runtime first on PYTHONPATH when there is one."""
    env = porch_env(settings.workdir)
    if settings.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [settings.pythonpath, env.get("PYTHONPATH")])
        )
    return env


def kill_tree(proc: subprocess.Popen[str]) -> list[int]:
    """Stop `proc` gently, then kill it and every process it started, by pid.

    Returns the pids of descendants that were still alive after `proc` exited (they had to be
    killed: a teardown bug)."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_S * 3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=KILL_GRACE_S)
    _, alive = psutil.wait_procs(tree, timeout=KILL_GRACE_S)
    for child in alive:
        with suppress(psutil.NoSuchProcess):
            child.kill()
    return [p.pid for p in alive]


@dataclass
class Child:
    """A spawned process: stdout piped (text), stderr to a file (never blocks the child)."""

    proc: subprocess.Popen[str]
    stderr_path: Path
    started_s: float
    unread: bytearray = field(default_factory=bytearray)  # read off the pipe, not yet a line
    ended: bool = False  # the pipe reached its end

    @property
    def stdout(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def take_unread(self) -> str:
        """What read_line took off the pipe but did not return yet."""
        text = self.unread.decode(errors="replace")
        self.unread.clear()
        return text

    def stderr_tail(self, lines: int = 5) -> str:
        """The last lines the child wrote to stderr, on one line."""
        with suppress(OSError):
            text = self.stderr_path.read_text(errors="replace")
            return " | ".join(text.strip().splitlines()[-lines:])
        return ""


@contextmanager
def spawned(
    cmd: Sequence[str], workdir: Path, env: dict[str, str] | None = None
) -> Iterator[Child]:
    """Start `cmd`; whatever is still running on exit (it and its descendants) is killed."""
    fd, name = tempfile.mkstemp(prefix="stderr-", suffix=".log", dir=workdir)
    with os.fdopen(fd, "w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            # not the checkout: an interpreter started with `-m` imports from its cwd first,
            # which would measure the working tree instead of an exported --commit
            cwd=workdir,
            start_new_session=True,
        )
    child = Child(proc, Path(name), started)
    try:
        yield child
    finally:
        left = kill_tree(proc)
        if left:
            print(f"  warning: killed processes left running by {cmd[0]}: {left}", file=sys.stderr)
        if proc.stdout is not None:
            proc.stdout.close()


def finish(child: Child, what: str, timeout_s: float) -> str:
    """Wait for the child to exit 0 and return its stdout; raise BenchError otherwise."""
    try:
        out, _ = child.proc.communicate(timeout=timeout_s)
        out = child.take_unread() + (out or "")
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} still running after {timeout_s:.0f}s (hang?)") from exc
    if child.proc.returncode != 0:
        raise BenchError(f"{what} exited {child.proc.returncode}: {child.stderr_tail()}")
    return out


LOG_NOISE = ("timestamp", "level", "event", "pipeline")


def runtime_warnings(child: Child) -> tuple[str, ...]:
    """Warnings and errors Porch logged on stderr during a run, one line each, e.g.
    `bench_a: target_finished (target=bench_b dropped=998)`."""
    notes = []
    with suppress(OSError):
        for line in child.stderr_path.read_text(errors="replace").splitlines():
            name, sep, rest = line.partition(" | ")
            if line.startswith("porch: "):
                if any(word in line for word in ("warning", "error", "fail", "kill", "lost")):
                    notes.append(line)
                continue
            if not sep or not rest.startswith("{"):
                continue
            try:
                record = json.loads(rest)
            except ValueError:
                continue
            if not isinstance(record, dict) or record.get("level") not in ("warning", "error"):
                continue
            details = " ".join(f"{k}={v}" for k, v in record.items() if k not in LOG_NOISE)
            notes.append(f"{name}: {record.get('level')} {record.get('event')} ({details})")
    return tuple(notes)


def read_line(child: Child, timeout_s: float) -> str | None:
    """The next line the child prints, or None at end of output; BenchError on timeout.

    Reads the pipe's bytes itself (os.read) and keeps what follows the line in `child.unread`.
    A buffered readline() after select() left the lines that came in the same read in the file
    object's buffer, where select() does not see them: the last sink's `linked` line of the
    many-pipelines runs sat there until the deadline (the intermittent 53 s start "stall")."""
    deadline = time.monotonic() + timeout_s
    fd = child.stdout.fileno()
    while True:
        newline = child.unread.find(b"\n")
        if newline >= 0:
            line = child.unread[:newline].decode(errors="replace")
            del child.unread[: newline + 1]
            return line
        if child.ended:
            return child.take_unread() or None
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise BenchError(f"no output from pid {child.proc.pid} within {timeout_s:.0f}s")
        data = os.read(fd, 65536)
        child.ended = not data
        child.unread += data


def parse_bench(out: str, prefix: str = "") -> dict[str, Any]:
    """The JSON of the `BENCH {...}` line that follows `prefix` in `out`."""
    pattern = re.compile(r"^" + re.escape(prefix) + r"BENCH (\{.*\})$", re.M)
    match = pattern.search(out)
    if match is None:
        raise BenchError(f"no '{prefix}BENCH {{...}}' line in the output")
    result: dict[str, Any] = json.loads(match.group(1))
    return result


def self_cmd(*args: object) -> list[str]:
    """A command line that runs this file with the given hidden sub-command."""
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


def emit_bench(**values: object) -> None:
    """Print the one `BENCH {...}` line the parent parses."""
    print("BENCH " + json.dumps(values), flush=True)


def percentiles(latencies_ns: list[int]) -> dict[str, float]:
    """p50 and p99 in milliseconds (same code for raw and Porch: see LATENCY_SINK)."""
    if len(latencies_ns) < 2:
        return {}
    cuts = statistics.quantiles(latencies_ns, n=100, method="inclusive")
    return {"p50_ms": statistics.median(latencies_ns) / 1e6, "p99_ms": cuts[98] / 1e6}


# ---------------------------------------------------------------- raw pyzmq baselines


def bind_push(linger_ms: int) -> tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes]]:
    """A PUSH socket bound on a free loopback port; the port is printed for the parent."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.bind("tcp://127.0.0.1:0")
    print(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1], flush=True)
    return ctx, sock


def connect_pull(port: str) -> tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes]]:
    """A PULL socket connected to the producer's port."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return ctx, sock


def bench_message(seq: int) -> dict[str, Any]:
    """The small message every throughput benchmark sends (issue 12's)."""
    return {"seq": seq, "topic": "bench", "value": 1.5}


def raw_push(args: Sequence[str]) -> int:
    """Child: send N pickled small dicts, one message each."""
    n, linger_ms = int(args[0]), int(args[1])
    ctx, sock = bind_push(linger_ms)
    cpu0 = time.process_time()
    for i in range(n):
        sock.send(pickle.dumps(bench_message(i), protocol=5))
    cpu_s = time.process_time() - cpu0
    sock.close()
    ctx.term()
    emit_bench(cpu_s=cpu_s)
    return 0


def raw_pull(args: Sequence[str]) -> int:
    """Child: unpickle and count N messages; time first to last arrival."""
    port, n, first_timeout_ms = args[0], int(args[1]), int(args[2])
    ctx, sock = connect_pull(port)
    count, first, last = 0, 0.0, 0.0
    timeout_ms = first_timeout_ms
    cpu0 = time.process_time()
    while count < n and sock.poll(timeout_ms):
        pickle.loads(sock.recv())
        last = time.perf_counter()
        if count == 0:
            first, timeout_ms = last, int(IDLE_TIMEOUT_S * 1000)
        count += 1
    emit_bench(count=count, seconds=last - first, cpu_s=time.process_time() - cpu0)
    sock.close()
    ctx.term()
    return 0


CEILING_BATCH = 100  # values pickled per frame by the ceiling baseline


def ceiling_push(args: Sequence[str]) -> int:
    """Child: the ceiling of Porch's model in Python: a source step() per message, values
    pickled CEILING_BATCH per frame, no acks or bookkeeping."""
    n, linger_ms = int(args[0]), int(args[1])
    ctx, sock = bind_push(linger_ms)
    counter = 0

    def step() -> dict[str, Any]:
        nonlocal counter
        counter += 1
        return {"seq": counter, "topic": "bench", "value": 1.5}

    cpu0 = time.process_time()
    for start in range(0, n, CEILING_BATCH):
        values = [step() for _ in range(min(CEILING_BATCH, n - start))]
        sock.send(pickle.dumps(values, protocol=5))
    cpu_s = time.process_time() - cpu0
    sock.close()
    ctx.term()
    emit_bench(cpu_s=cpu_s)
    return 0


def ceiling_pull(args: Sequence[str]) -> int:
    """Child: a sink step({"src": value}) per message of the ceiling's frames; first to last."""
    port, n, first_timeout_ms = args[0], int(args[1]), int(args[2])
    ctx, sock = connect_pull(port)
    count, first, last = 0, 0.0, 0.0

    def step(input_data: dict[str, Any]) -> None:
        nonlocal count, first, last
        last = time.perf_counter()
        if count == 0:
            first = last
        count += 1

    timeout_ms = first_timeout_ms
    cpu0 = time.process_time()
    while count < n and sock.poll(timeout_ms):
        for value in pickle.loads(sock.recv()):
            step({"src": value})
        timeout_ms = int(IDLE_TIMEOUT_S * 1000)
    emit_bench(count=count, seconds=last - first, cpu_s=time.process_time() - cpu0)
    sock.close()
    ctx.term()
    return 0


def paced(rate: float, count: int) -> Iterator[None]:
    """Yield `count` times on an absolute schedule of `rate` per second (sleeping between)."""
    interval_ns = int(1e9 / rate)
    due = time.monotonic_ns()
    for _ in range(count):
        now = time.monotonic_ns()
        if now < due:
            time.sleep((due - now) / 1e9)
        due += interval_ns
        yield


def lat_push(args: Sequence[str]) -> int:
    """Child: send `count` pickled CLOCK_MONOTONIC stamps at `rate` per second."""
    rate, count, linger_ms = float(args[0]), int(args[1]), int(args[2])
    ctx, sock = bind_push(linger_ms)
    for _ in paced(rate, count):
        sock.send(pickle.dumps(time.monotonic_ns(), protocol=5))
    sock.close()
    ctx.term()
    return 0


def lat_pull(args: Sequence[str]) -> int:
    """Child: one-way latency of each stamp, after a warm-up from the first arrival."""
    port, count, warmup_ns, first_timeout_ms = args[0], int(args[1]), int(args[2]), int(args[3])
    ctx, sock = connect_pull(port)
    latencies: list[int] = []
    received, first = 0, 0
    timeout_ms = first_timeout_ms
    while received < count and sock.poll(timeout_ms):
        stamp = pickle.loads(sock.recv())
        now = time.monotonic_ns()
        if not first:
            first, timeout_ms = now, int(IDLE_TIMEOUT_S * 1000)
        if stamp >= first + warmup_ns:
            latencies.append(now - stamp)
        received += 1
    emit_bench(count=received, samples=len(latencies), **percentiles(latencies))
    sock.close()
    ctx.term()
    return 0


def big_push(args: Sequence[str]) -> int:
    """Child: send one numpy array's buffer `count` times, zero-copy (send(copy=False))."""
    import numpy as np

    nbytes, count, linger_ms = int(args[0]), int(args[1]), int(args[2])
    array = np.arange(nbytes // 8, dtype=np.float64)
    ctx, sock = bind_push(linger_ms)
    for _ in range(count):
        sock.send(array.data, copy=False)  # the array buffer itself, no copy
    sock.close()
    ctx.term()
    return 0


def big_pull(args: Sequence[str]) -> int:
    """Child: recv(copy=False) each array, view it as numpy (no copy), check its last value."""
    import numpy as np

    port, count, skip, first_timeout_ms = args[0], int(args[1]), int(args[2]), int(args[3])
    ctx, sock = connect_pull(port)
    received, nbytes, first, last = 0, 0, 0.0, 0.0
    timeout_ms = first_timeout_ms
    while received < count and sock.poll(timeout_ms):
        frame = sock.recv(copy=False)
        array = np.frombuffer(frame.buffer, dtype=np.float64)
        last = time.perf_counter()
        timeout_ms = int(IDLE_TIMEOUT_S * 1000)
        if array[-1] != array.size - 1:
            print(f"array {received} arrived corrupted", file=sys.stderr)
            return 1
        if received == skip:
            first = last
        elif received > skip:
            nbytes += array.nbytes
        received += 1
    emit_bench(count=received, seconds=last - first, bytes=nbytes)
    sock.close()
    ctx.term()
    return 0


def raw_pair(
    settings: Settings, push: Sequence[object], pull: Sequence[object], what: str
) -> dict[str, Any]:
    """Start a raw producer, then its consumer on the printed port; the consumer's BENCH."""
    timeout_s = settings.timeout_s
    with spawned(self_cmd(*push), settings.workdir) as producer:
        port = read_line(producer, timeout_s)
        if port is None or not port.isdigit():
            raise BenchError(f"{what} producer printed {port!r} instead of its port")
        cmd = self_cmd(pull[0], port, *pull[1:])  # the consumer's first argument: the port
        with spawned(cmd, settings.workdir) as consumer:
            out = finish(consumer, f"{what} consumer", timeout_s)
        out_producer = finish(producer, f"{what} producer", timeout_s)
    got = parse_bench(out)
    if "cpu_s" in got:  # CPU seconds of the send and receive loops
        got["cpu_s"] = {"push": parse_bench(out_producer)["cpu_s"], "pull": got["cpu_s"]}
    return got


def bench_raw(settings: Settings) -> Sample:
    """Raw pyzmq: PUSH process -> PULL process, one pickled int per message."""
    n, timeout_ms = settings.sizes.n, int(settings.timeout_s * 1000)
    got = raw_pair(settings, ("_raw-push", n, timeout_ms), ("_raw-pull", n, timeout_ms), "raw")
    return throughput_sample(got, n)


def bench_ceiling(settings: Settings) -> Sample:
    """The ceiling of Porch's model with pyzmq and pickle only (issue 12): step() per message
    on both ends, values pickled CEILING_BATCH per frame over PUSH/PULL, nothing else."""
    n, timeout_ms = settings.sizes.n, int(settings.timeout_s * 1000)
    push, pull = ("_ceil-push", n, timeout_ms), ("_ceil-pull", n, timeout_ms)
    return throughput_sample(raw_pair(settings, push, pull, "ceiling"), n)


def bench_raw_latency(settings: Settings) -> Sample:
    """Raw pyzmq one-way latency at a low rate: PUSH stamps, PULL reads the clock."""
    sizes, timeout_ms = settings.sizes, int(settings.timeout_s * 1000)
    count = latency_count(sizes)
    warmup_ns = int(sizes.latency_warmup_s * 1e9)
    got = raw_pair(
        settings,
        ("_lat-push", sizes.latency_rate, count, timeout_ms),
        ("_lat-pull", count, warmup_ns, timeout_ms),
        "raw latency",
    )
    return latency_sample(got, count)


def bench_raw_large(settings: Settings) -> Sample:
    """Raw pyzmq zero-copy: the same numpy buffer sent `large_count` times."""
    sizes, timeout_ms = settings.sizes, int(settings.timeout_s * 1000)
    got = raw_pair(
        settings,
        ("_big-push", sizes.large_bytes, sizes.large_count, timeout_ms),
        ("_big-pull", sizes.large_count, sizes.large_skip, timeout_ms),
        "raw large",
    )
    return large_sample(got, sizes.large_count)


def throughput_sample(got: dict[str, Any], expected: int) -> Sample:
    """msgs/s from a consumer's count and first-to-last seconds; with `cpu_s` (seconds by
    process), CPU microseconds per message: in all and per process."""
    count, seconds = int(got["count"]), float(got["seconds"])
    if seconds <= 0 or count <= 0:
        raise BenchError(f"consumer timed {count} messages in {seconds}s; cannot rate it")
    metrics = {"rate": count / seconds}
    cpu: dict[str, float] = got.get("cpu_s", {})
    if cpu:
        metrics["cpu_us_per_msg"] = sum(cpu.values()) / count * 1e6
        metrics |= {f"cpu_us_{name}": cpu_s / count * 1e6 for name, cpu_s in cpu.items()}
    return Sample(metrics, count, expected, got.get("notes", ()))


def latency_count(sizes: Sizes) -> int:
    """Messages a latency run sends: start-up backlog allowance, warm-up, measured part."""
    return int(sizes.latency_rate * (0.5 + sizes.latency_warmup_s + sizes.latency_s))


def latency_sample(got: dict[str, Any], expected: int) -> Sample:
    """p50/p99 from a latency consumer's report."""
    if "p50_ms" not in got:
        raise BenchError(f"only {got.get('samples', 0)} latency samples after the warm-up")
    metrics = {"p50_ms": float(got["p50_ms"]), "p99_ms": float(got["p99_ms"])}
    return Sample(metrics, int(got["count"]), expected, got.get("notes", ()))


def large_sample(got: dict[str, Any], expected: int) -> Sample:
    """MB/s from a large-message consumer's report (the arrays after the skipped ones)."""
    count, seconds, nbytes = int(got["count"]), float(got["seconds"]), int(got["bytes"])
    if nbytes <= 0 or seconds <= 0:
        raise BenchError(f"{count} arrays, {nbytes} bytes timed in {seconds}s: cannot rate it")
    return Sample({"mb_per_s": nbytes / MB / seconds}, count, expected, got.get("notes", ()))


# ---------------------------------------------------------------- porch pipelines

# Every throughput pipeline prints the CPU time it used from its script's top level (so not
# the worker's start-up) to end(): `CPU {"cpu_s": ...}`.
CPU_REPORT = """\


import json as _json
import time as _time

_cpu0 = _time.process_time()


def end():
    print("CPU " + _json.dumps({"cpu_s": _time.process_time() - _cpu0}), flush=True)
"""

THROUGHPUT_SOURCE = (
    """\
counter = 0


def step():
    global counter
    counter += 1
    return {"seq": counter, "topic": "bench", "value": 1.5}
"""
    + CPU_REPORT
)

PASS_THROUGH = (
    """\
def step(input_data):
    for value in input_data.values():
        return value
"""
    + CPU_REPORT
)

THROUGHPUT_SINK = """\
import json
import time

cpu0 = time.process_time()
count = 0
first = 0.0
last = 0.0


def step(input_data):
    global count, first, last
    last = time.perf_counter()
    if count == 0:
        first = last
    count += 1


def end():
    print("BENCH " + json.dumps({"count": count, "seconds": last - first}), flush=True)
    print("CPU " + json.dumps({"cpu_s": time.process_time() - cpu0}), flush=True)
"""

LATENCY_SOURCE = """\
import time

INTERVAL_NS = int(1e9 / RATE)
due = 0


def step():
    global due
    now = time.monotonic_ns()
    if not due:
        due = now
    elif now < due:
        time.sleep((due - now) / 1e9)
    due += INTERVAL_NS
    return time.monotonic_ns()
"""

LATENCY_SINK = """\
import json
import statistics
import time

latencies = []
received = 0
first = 0


def step(input_data):
    global received, first
    now = time.monotonic_ns()
    stamp = input_data[SOURCE]
    if not first:
        first = now
    if stamp >= first + WARMUP_NS:
        latencies.append(now - stamp)
    received += 1


def end():
    report = {"count": received, "samples": len(latencies)}
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        report["p50_ms"] = statistics.median(latencies) / 1e6
        report["p99_ms"] = cuts[98] / 1e6
    print("BENCH " + json.dumps(report), flush=True)
"""

LARGE_SOURCE = """\
import numpy as np

ARRAY = np.arange(NBYTES // 8, dtype=np.float64)


def step():
    return ARRAY
"""

LARGE_SINK = """\
import json
import time

received = 0
nbytes = 0
first = 0.0
last = 0.0


def step(input_data):
    global received, nbytes, first, last
    array = input_data[SOURCE]
    last = time.perf_counter()
    if array[-1] != array.size - 1:
        raise ValueError(f"array {received} arrived corrupted")
    if received == SKIP:
        first = last
    elif received > SKIP:
        nbytes += array.nbytes
    received += 1


def end():
    report = {"count": received, "seconds": last - first, "bytes": nbytes}
    print("BENCH " + json.dumps(report), flush=True)
"""

IDLE_SOURCE = """\
import time

import porch

sent = False


def step():
    global sent
    if not sent:  # one value, so the sink can say it is linked
        sent = True
        return "hello"
    time.sleep(IDLE_SLEEP_S)  # then idle, like a sensor with nothing new to report
    return porch.SKIP
"""

IDLE_SINK = """\
def step(input_data):
    print("linked", flush=True)
"""

# 100 MB messages: a short queue (in messages) and a byte limit that lets several through.
LARGE_CONFIG = {"queue_limit": 4, "queue_limit_bytes": 1024 * 1024 * 1024}


@dataclass(frozen=True)
class Node:
    """One pipeline of a benchmark graph."""

    name: str
    script: str
    targets: tuple[str, ...] = ()
    sources: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # constants prepended to the script
    config: dict[str, Any] = field(default_factory=dict)  # extra config fields


def write_graph(settings: Settings, prefix: str, nodes: Sequence[Node]) -> list[Path]:
    """Write every node's script and config into a fresh folder; return the configs."""
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=settings.workdir))
    configs = []
    for node in nodes:
        constants = "".join(f"{key} = {value!r}\n" for key, value in node.params.items())
        (folder / f"{node.name}.py").write_text(constants + textwrap.dedent(node.script))
        config = {
            "name": node.name,
            "scripts": [f"{node.name}.py"],
            "source_pipeline_count": node.sources,
            "target_pipeline_names": list(node.targets),
            **node.config,
        }
        path = folder / f"{node.name}.json"
        path.write_text(json.dumps(config, indent=2) + "\n")
        configs.append(path)
    return configs


def porch_exe(tool: str = "porch") -> str:
    """A console script installed beside the running interpreter."""
    return str(Path(sys.executable).parent / tool)


def run_porch(
    settings: Settings,
    prefix: str,
    nodes: Sequence[Node],
    sink: str,
    iterations: int,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`porch run` the graph until its sources' N iterations have flowed through; the sink's
    BENCH report. `env`: variables to add (TCP_LINKS)."""
    configs = write_graph(settings, prefix, nodes)
    cmd = [porch_exe(), "run", *map(str, configs), "--iterations", str(iterations), *extra]
    with spawned(cmd, settings.workdir, {**settings_env(settings), **(env or {})}) as child:
        out = finish(child, "porch run", settings.timeout_s)
        notes = runtime_warnings(child)
    got = parse_bench(out, f"{sink} | ")
    got["notes"] = notes
    cpu = {}
    for match in re.finditer(r"^(\S+) \| CPU (\{.*\})$", out, re.M):
        cpu[match.group(1)] = float(json.loads(match.group(2))["cpu_s"])
    if cpu:
        got["cpu_s"] = cpu
    return got


def chain(names: Sequence[str], sender_config: dict[str, Any] | None = None) -> list[Node]:
    """A linear throughput graph: source -> pass-through ... -> counting sink; `sender_config`
    goes into every pipeline that sends."""
    extra = sender_config or {}
    nodes = [Node(names[0], THROUGHPUT_SOURCE, (names[1],), config=extra)]
    for name, target in itertools.pairwise(names[1:]):
        nodes.append(Node(name, PASS_THROUGH, (target,), 1, config=extra))
    nodes.append(Node(names[-1], THROUGHPUT_SINK, (), 1))
    return nodes


def bench_porch_chain(settings: Settings) -> Sample:
    """Porch A -> B: the source returns an int per step(), the sink counts (acks on)."""
    n = settings.sizes.n
    got = run_porch(settings, "chain", chain(["bench_a", "bench_b"]), "bench_b", n)
    return throughput_sample(got, n)


# Pipelines of one `porch run` link over ipc:// by default (no CURVE, porch/localsock.py); the
# CURVE-vs-plain benchmarks and the TCP baselines below ask for TCP links between them.
TCP_LINKS = {"PORCH_LOCAL_LINKS": "tcp"}


def bench_plain_chain(settings: Settings) -> Sample:
    """The same A -> B with --insecure over TCP: plain TCP links, no local secret (Porch's
    default before loopback was authenticated)."""
    n = settings.sizes.n
    nodes = chain(["bench_a", "bench_b"])
    got = run_porch(settings, "plain", nodes, "bench_b", n, extra=("--insecure",), env=TCP_LINKS)
    return throughput_sample(got, n)


def bench_tcp_chain(settings: Settings) -> Sample:
    """porch_chain over TCP with the local secret (CURVE): the default before same-supervisor
    links went over ipc://."""
    n = settings.sizes.n
    got = run_porch(settings, "tcp", chain(["bench_a", "bench_b"]), "bench_b", n, env=TCP_LINKS)
    return throughput_sample(got, n)


def bench_porch_chain_unacked(settings: Settings) -> Sample:
    """The same A -> B with `"delivery": "at-most-once"` on the source: no acks."""
    n = settings.sizes.n
    nodes = chain(["bench_a", "bench_b"], {"delivery": "at-most-once"})
    got = run_porch(settings, "unacked", nodes, "bench_b", n)
    return throughput_sample(got, n)


def bench_porch_chain4(settings: Settings) -> Sample:
    """Porch A -> B -> C -> D: two pass-through pipelines in the middle."""
    n = settings.sizes.n
    names = ["bench_a", "bench_b", "bench_c", "bench_d"]
    got = run_porch(settings, "chain4", chain(names), "bench_d", n)
    return throughput_sample(got, n)


def bench_porch_chain4_unacked(settings: Settings) -> Sample:
    """A -> B -> C -> D with `"delivery": "at-most-once"` on A, B and C: no acks, no waits
    for them; shows how much of the 4-stage cost is the ack path."""
    n = settings.sizes.n
    names = ["bench_a", "bench_b", "bench_c", "bench_d"]
    nodes = chain(names, {"delivery": "at-most-once"})
    got = run_porch(settings, "chain4-unacked", nodes, "bench_d", n)
    return throughput_sample(got, n)


def bench_porch_diamond(settings: Settings) -> Sample:
    """Porch diamond: A fans out to B and C (pass-through), D fans in both (one per pair)."""
    n = settings.sizes.n
    nodes = [
        Node("bench_a", THROUGHPUT_SOURCE, ("bench_b", "bench_c")),
        Node("bench_b", PASS_THROUGH, ("bench_d",), 1),
        Node("bench_c", PASS_THROUGH, ("bench_d",), 1),
        Node("bench_d", THROUGHPUT_SINK, (), 2),
    ]
    got = run_porch(settings, "diamond", nodes, "bench_d", n)
    return throughput_sample(got, n)


def bench_porch_latency(settings: Settings) -> Sample:
    """Porch A -> B at a low rate: A's step() returns CLOCK_MONOTONIC, B's step() reads it."""
    sizes = settings.sizes
    count = latency_count(sizes)
    nodes = [
        Node("bench_a", LATENCY_SOURCE, ("bench_b",), params={"RATE": sizes.latency_rate}),
        Node(
            "bench_b",
            LATENCY_SINK,
            (),
            1,
            params={"SOURCE": "bench_a", "WARMUP_NS": int(sizes.latency_warmup_s * 1e9)},
        ),
    ]
    got = run_porch(settings, "latency", nodes, "bench_b", count)
    return latency_sample(got, count)


def bench_porch_large(settings: Settings) -> Sample:
    """Porch A -> B with a 100 MB numpy array per step() (pickle 5 out-of-band buffers)."""
    sizes = settings.sizes
    nodes = [
        Node(
            "bench_a",
            LARGE_SOURCE,
            ("bench_b",),
            params={"NBYTES": sizes.large_bytes},
            config=LARGE_CONFIG,
        ),
        Node(
            "bench_b",
            LARGE_SINK,
            (),
            1,
            params={"SOURCE": "bench_a", "SKIP": sizes.large_skip},
            config=LARGE_CONFIG,
        ),
    ]
    got = run_porch(settings, "large", nodes, "bench_b", sizes.large_count)
    return large_sample(got, sizes.large_count)


def bench_tcp_large(settings: Settings) -> Sample:
    """porch_large over TCP with the local secret (CURVE on every byte): the default before
    same-supervisor links went over ipc://."""
    sizes = settings.sizes
    nodes = [
        Node("bench_a", LARGE_SOURCE, ("bench_b",), params={"NBYTES": sizes.large_bytes},
             config=LARGE_CONFIG),
        Node("bench_b", LARGE_SINK, (), 1, params={"SOURCE": "bench_a", "SKIP": sizes.large_skip},
             config=LARGE_CONFIG),
    ]  # fmt: skip
    got = run_porch(settings, "tcp-large", nodes, "bench_b", sizes.large_count, env=TCP_LINKS)
    return large_sample(got, sizes.large_count)


def wait_for_lines(
    child: Child, wanted: Callable[[str], bool], how_many: int, deadline_s: float
) -> tuple[dict[int, float], list[str]]:
    """Read the child's stdout until `how_many` distinct lines matched `wanted`.

    Returns when each match came (seconds since the child started, keyed by match order) and
    the lines read; BenchError when the output ends or the deadline passes first."""
    seen: set[str] = set()
    times: dict[int, float] = {}
    lines: list[str] = []
    while len(seen) < how_many:
        left = deadline_s - (time.monotonic() - child.started_s)
        if left <= 0:
            raise BenchError(f"{len(seen)} of {how_many} expected lines after {deadline_s:.0f}s")
        line = read_line(child, left)
        if line is None:
            raise BenchError(
                f"output ended after {len(seen)} of {how_many} expected lines "
                f"(exit {child.proc.wait()}): {child.stderr_tail()}"
            )
        lines.append(line)
        if wanted(line) and line not in seen:
            seen.add(line)
            times[len(seen)] = time.monotonic() - child.started_s
    return times, lines


def bench_startup(settings: Settings) -> Sample:
    """`porch run examples/diamond/*.json`, as shipped: wall time to pipeline_d's first line."""
    configs = sorted((ROOT / "examples" / "diamond").glob("*.json"))
    cmd = [porch_exe(), "run", *map(str, configs), "--iterations", "1"]
    with spawned(cmd, settings.workdir, settings_env(settings)) as child:
        times, _ = wait_for_lines(child, lambda s: s.startswith("pipeline_d | "), 1, 30.0)
        first_output = times[1]
        finish(child, "porch run of the diamond", 30.0)
        notes = runtime_warnings(child)
    return Sample({"first_output_s": first_output}, notes=notes)


def worker_processes(supervisor: int) -> list[psutil.Process]:
    """The supervisor's worker processes: forks of its fork server, titled `porch worker NAME`
    (or, with PORCH_FORK_SERVER=0, its children `python -m workers ...`)."""
    workers = []
    for proc in psutil.Process(supervisor).children(recursive=True):
        with suppress(psutil.Error):
            cmdline = proc.cmdline()
            if (cmdline[:1] and cmdline[0].startswith(WORKER_TITLE)) or "workers" in cmdline[1:3]:
                workers.append(proc)
    return workers


WORKER_TITLE = "porch worker "


def worker_name(proc: psutil.Process) -> str:
    """The pipeline a worker process runs (from its title, else its --config)."""
    cmdline = proc.cmdline()
    if cmdline[0].startswith(WORKER_TITLE):
        return cmdline[0][len(WORKER_TITLE) :]
    return Path(cmdline[cmdline.index("--config") + 1]).stem


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    """User + system CPU time these processes have used so far."""
    total = 0.0
    for proc in procs:
        with suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def run_ns(procs: Sequence[psutil.Process]) -> float:
    """Nanoseconds these processes' threads have run (Linux /proc/PID/task/*/schedstat: exact,
    where psutil's cpu_times counts 10 ms clock ticks)."""
    total = 0
    for proc in procs:
        for stat in Path(f"/proc/{proc.pid}/task").glob("*/schedstat"):
            with suppress(OSError, ValueError, IndexError):
                total += int(stat.read_text().split()[0])
    return float(total)


def bench_many(settings: Settings) -> Sample:
    """`porch run` of `chains` independent source -> sink chains (128 pipelines in all).

    Each source sends one value, then idles in step() (sleeps and returns SKIP, like a sensor
    with nothing new). Measured: seconds from `porch run` to every sink's first line; then,
    after a settle time, the workers' RSS and their CPU over `idle_s` seconds of idleness.
    """
    sizes = settings.sizes
    nodes: list[Node] = []
    for i in range(sizes.chains):
        src, sink = f"many_src_{i:02d}", f"many_sink_{i:02d}"
        nodes.append(Node(src, IDLE_SOURCE, (sink,), params={"IDLE_SLEEP_S": 0.5}))
        nodes.append(Node(sink, IDLE_SINK, (), 1))
    configs = write_graph(settings, "many", nodes)
    cmd = [porch_exe(), "run", *map(str, configs)]
    with spawned(cmd, settings.workdir, settings_env(settings)) as child:
        times, _ = wait_for_lines(
            child,
            lambda s: s.startswith("many_sink_") and s.endswith(" | linked"),
            sizes.chains,
            sizes.linked_deadline_s,
        )
        linked_s = times[sizes.chains]
        time.sleep(sizes.settle_s)
        workers = worker_processes(child.proc.pid)
        if len(workers) != len(nodes):
            raise BenchError(f"{len(workers)} worker processes running, expected {len(nodes)}")
        supervisor = psutil.Process(child.proc.pid)
        sources = [p for p in workers if worker_name(p).startswith("many_src_")]
        ns_before, ns_src_before = run_ns(workers), run_ns(sources)
        before, sup_before, t0 = cpu_seconds(workers), cpu_seconds([supervisor]), time.monotonic()
        time.sleep(sizes.idle_s)
        after, sup_after, t1 = cpu_seconds(workers), cpu_seconds([supervisor]), time.monotonic()
        ns_after, ns_src_after = run_ns(workers), run_ns(sources)
        ns_src = ns_src_after - ns_src_before
        rss, uss = [], []
        for proc in workers:
            with suppress(psutil.Error):
                rss.append(proc.memory_info().rss / MB)
                uss.append(proc.memory_full_info().uss / MB)
        if len(rss) != len(nodes) or len(uss) != len(nodes):
            raise BenchError(f"only {len(rss)} of {len(nodes)} workers still alive when idle")
        stop_run(child, len(nodes))
        notes = runtime_warnings(child)
    return Sample(
        {
            "linked_s": linked_s,
            "rss_max_mb": max(rss),
            "rss_median_mb": statistics.median(rss),
            "uss_median_mb": statistics.median(uss),
            "idle_cpu_pct": 100.0 * (after - before) / (t1 - t0),
            "idle_cpu_pct_schedstat": 100.0 * (ns_after - ns_before) / 1e9 / (t1 - t0),
            "idle_cpu_pct_sources": 100.0 * ns_src / 1e9 / (t1 - t0),
            "idle_cpu_pct_sinks": 100.0 * (ns_after - ns_before - ns_src) / 1e9 / (t1 - t0),
            "supervisor_idle_cpu_pct": 100.0 * (sup_after - sup_before) / (t1 - t0),
        },
        notes=notes,
    )


def bench_many_starts(settings: Settings) -> Sample:
    """Issue 12: `starts` runs of `porch run` in a row, each of `start_chains` idle source ->
    sink chains (as bench_many), each stopped with SIGINT once every sink printed its line.
    Measured: the slowest start's seconds from `porch run` to the last sink linked (one slow
    start in ten is the stall this looks for), and the median start."""
    sizes = settings.sizes
    nodes: list[Node] = []
    for i in range(sizes.start_chains):
        src, sink = f"start_src_{i:02d}", f"start_sink_{i:02d}"
        nodes.append(Node(src, IDLE_SOURCE, (sink,), params={"IDLE_SLEEP_S": 0.5}))
        nodes.append(Node(sink, IDLE_SINK, (), 1))
    configs = write_graph(settings, "starts", nodes)
    cmd = [porch_exe(), "run", *map(str, configs)]
    linked: list[float] = []
    notes: list[str] = []
    for start in range(sizes.starts):
        with spawned(cmd, settings.workdir, settings_env(settings)) as child:
            try:
                times, lines = wait_for_lines(
                    child,
                    lambda s: s.startswith("start_sink_") and s.endswith(" | linked"),
                    sizes.start_chains,
                    sizes.linked_deadline_s,
                )
            except BenchError as exc:
                warned = "; ".join(runtime_warnings(child)[-5:])
                raise BenchError(f"start {start + 1} of {sizes.starts}: {exc} {warned}") from None
            linked.append(times[sizes.start_chains])
            if len(times) > 1 and times[len(times)] - times[len(times) - 1] > 1.0:
                last = [line for line in lines if line.endswith(" | linked")][-1]
                notes.append(f"start {start + 1}: {last.split(' |')[0]} linked last, "
                             f"{times[len(times)] - times[len(times) - 1]:.1f} s after the "
                             f"others")  # fmt: skip
            stop_run(child, len(nodes))
            notes.extend(runtime_warnings(child))
    print(f"  many_starts: linked in {', '.join(f'{t:.2f}' for t in linked)} s", file=sys.stderr)
    return Sample(
        {"linked_max_s": max(linked), "linked_median_s": statistics.median(linked)},
        notes=tuple(notes),
    )


def stop_run(child: Child, workers_expected: int) -> None:
    """SIGINT a `porch run` (like Ctrl+C) and check it exits 0 and leaves no worker behind."""
    workers = worker_processes(child.proc.pid)
    if len(workers) != workers_expected:
        raise BenchError(f"{len(workers)} worker processes running, expected {workers_expected}")
    child.proc.send_signal(signal.SIGINT)
    try:
        child.proc.wait(timeout=30.0)
    except subprocess.TimeoutExpired:
        raise BenchError("porch run did not stop within 30s of SIGINT") from None
    _, alive = psutil.wait_procs(workers, timeout=KILL_GRACE_S)
    if alive:
        for proc in alive:
            with suppress(psutil.Error):
                proc.kill()
        raise BenchError(f"workers left running after porch run exited: {[p.pid for p in alive]}")
    if child.proc.returncode != 0:
        raise BenchError(f"porch run exited {child.proc.returncode} after SIGINT")


def _porchctl_status(control: Path, env: dict[str, str]) -> dict[str, Any] | None:
    try:
        done = subprocess.run([porch_exe("porchctl"), "--control", str(control), "status",
                               "--json"], capture_output=True, text=True, env=env,
                              timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def bench_many1000(settings: Settings) -> Sample:
    """Issue 18: `porchd` with `thousand` pipelines (idle source -> sink chains) and a second
    porchd beside it. Measured: seconds from start until every pipeline runs, every sink got
    its value (linked) and the second porchd's status lists all of them (discovery beacons in
    parts); then the CPU of the whole set (porchd, its fork server, every worker) while idle,
    and the workers' USS."""
    sizes = settings.sizes
    count = sizes.thousand
    nodes: list[Node] = []
    for i in range(count // 2):
        src, sink = f"k_src_{i:03d}", f"k_sink_{i:03d}"
        nodes.append(Node(src, IDLE_SOURCE, (sink,), params={"IDLE_SLEEP_S": 1.0}))
        nodes.append(Node(sink, IDLE_SINK, (), 1))
    folder = write_graph(settings, "thousand", nodes)[0].parent
    observer = write_graph(settings, "observer", [Node("observer", IDLE_SOURCE, (),
                                                       params={"IDLE_SLEEP_S": 1.0})])  # fmt: skip
    home = Path(tempfile.mkdtemp(prefix="thousand-", dir=settings.workdir))
    env = dict(settings_env(settings), PORCH_DISCOVERY_PORT=str(free_udp_port()))

    def porchd(name: str, source: Path) -> list[str]:
        return [porch_exe("porchd"), "start", str(source), "--control", str(home / name),
                "--state-dir", str(home / f"{name}-state")]  # fmt: skip

    with (
        spawned(porchd("a.sock", folder), settings.workdir, env) as big,
        spawned(porchd("b.sock", observer[0]), settings.workdir, env),
    ):
        linked_s = visible_s = None
        counts: tuple[int, int, int] = (0, 0, 0)
        while linked_s is None or visible_s is None:
            elapsed = time.monotonic() - big.started_s
            if elapsed > sizes.thousand_deadline_s:
                raise BenchError(f"after {elapsed:.0f} s: running, linked, visible = {counts}")
            mine = _porchctl_status(home / "a.sock", env) or {"pipelines": []}
            theirs = _porchctl_status(home / "b.sock", env) or {"remote": []}
            running = sum(p["state"] == "running" for p in mine["pipelines"])
            linked = sum(p["name"].startswith("k_sink_") and (p.get("msgs_in") or 0) >= 1
                         for p in mine["pipelines"])  # fmt: skip
            visible = len({r["name"] for r in theirs["remote"] if r["name"].startswith("k_")})
            counts = (running, linked, visible)
            now = time.monotonic() - big.started_s
            if linked_s is None and running == count and linked == count // 2:
                linked_s = now
            if visible_s is None and visible == count:
                visible_s = now
            time.sleep(1.0)
        time.sleep(sizes.settle_s)
        root = psutil.Process(big.proc.pid)
        family = [root, *root.children(recursive=True)]
        workers = worker_processes(big.proc.pid)
        before, t0 = cpu_seconds(family), time.monotonic()
        porchd_before = cpu_seconds([root])
        time.sleep(sizes.idle_s)
        after, t1 = cpu_seconds(family), time.monotonic()
        porchd_after = cpu_seconds([root])
        uss = []
        for proc in workers[:: max(1, len(workers) // 100)]:  # a sample of 100: it is slow
            with suppress(psutil.Error):
                uss.append(proc.memory_full_info().uss / MB)
        big.proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            big.proc.wait(timeout=120.0)
    return Sample(
        {
            "linked_s": linked_s,
            "visible_s": visible_s,
            "all_s": max(linked_s, visible_s),
            "workers": len(workers),
            "idle_cpu_pct": 100.0 * (after - before) / (t1 - t0),
            "porchd_idle_cpu_pct": 100.0 * (porchd_after - porchd_before) / (t1 - t0),
            "uss_median_mb": statistics.median(uss) if uss else float("nan"),
        }
    )


# ---------------------------------------------------------------- the registries

# ---------------------------------------------------------------- CURVE vs plain (issue 5)

CURVE_LARGE_BYTES = MB  # the 1 MB payloads of the CURVE-vs-plain comparison
CURVE_LARGE_COUNT = 300


def cluster_key(settings: Settings) -> Path:
    """A fresh cluster key file in the work folder (what `porch keygen` writes)."""
    from porch.security import KeyRing, new_key, write_keyring

    path = Path(tempfile.mkdtemp(prefix="key-", dir=settings.workdir)) / "cluster.key"
    write_keyring(path, KeyRing((new_key(),)), replace=False)
    return path


def run_porch_keyed(
    settings: Settings, prefix: str, nodes: Sequence[Node], sink: str, iterations: int
) -> dict[str, Any]:
    """`run_porch` with a cluster key: signed beacons and CURVE on every data link (TCP links
    between its pipelines, as between hosts)."""
    configs = write_graph(settings, prefix, nodes)
    cmd = [porch_exe(), "run", *map(str, configs), "--iterations", str(iterations),
           "--key-file", str(cluster_key(settings))]  # fmt: skip
    with spawned(cmd, settings.workdir, {**settings_env(settings), **TCP_LINKS}) as child:
        out = finish(child, "porch run --key-file", settings.timeout_s)
        notes = runtime_warnings(child)
    got = parse_bench(out, f"{sink} | ")
    got["notes"] = notes
    return got


def bench_curve_chain(settings: Settings) -> Sample:
    """porch_chain (A -> B, small messages, acks on) with a cluster key: CURVE links."""
    n = settings.sizes.n
    got = run_porch_keyed(settings, "curve", chain(["bench_a", "bench_b"]), "bench_b", n)
    return throughput_sample(got, n)


def mb_nodes(sizes: Sizes) -> list[Node]:
    """A -> B with a 1 MB numpy array per step()."""
    skip = min(sizes.large_skip * 4, CURVE_LARGE_COUNT // 4)
    return [
        Node("bench_a", LARGE_SOURCE, ("bench_b",), params={"NBYTES": CURVE_LARGE_BYTES}),
        Node("bench_b", LARGE_SINK, (), 1, params={"SOURCE": "bench_a", "SKIP": skip}),
    ]


def bench_plain_1mb(settings: Settings) -> Sample:
    """A -> B, 1 MB arrays, --insecure (plain TCP)."""
    got = run_porch(settings, "plain-1mb", mb_nodes(settings.sizes), "bench_b", CURVE_LARGE_COUNT,
                    extra=("--insecure",), env=TCP_LINKS)  # fmt: skip
    return large_sample(got, CURVE_LARGE_COUNT)


def bench_curve_1mb(settings: Settings) -> Sample:
    """A -> B, 1 MB arrays, with a cluster key (CURVE encrypts every byte)."""
    nodes = mb_nodes(settings.sizes)
    got = run_porch_keyed(settings, "curve-1mb", nodes, "bench_b", CURVE_LARGE_COUNT)
    return large_sample(got, CURVE_LARGE_COUNT)


# ---------------------------------------------------------------- reconnect after a cut (issue 20)

NETNS_CLUSTER = ROOT / "scripts" / "netns-cluster"
RECONNECT_SOURCE = """\
import time
n = 0
def step():
    global n
    n += 1
    time.sleep(0.02)
    return n
"""
RECONNECT_SINK = """\
def step(input_data):
    print("got", input_data["cut_src"], flush=True)
"""
BEACON_INTERVAL_S = 1.0  # porch's default, what the goal is counted in


def netns_problem() -> str | None:
    """Why this machine cannot build a namespace cluster, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (scripts/netns-cluster)"
    if subprocess.run(["sh", "-c", "command -v ip"], capture_output=True).returncode != 0:
        return "needs iproute2 (`ip`) for network namespaces"
    return None


def netns(*args: str) -> str:
    """Run scripts/netns-cluster ARGS; its stdout, BenchError when it fails."""
    done = subprocess.run([str(NETNS_CLUSTER), *args], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"netns-cluster {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def next_number(child: Child, deadline_s: float) -> int:
    """The number of the sink's next `cut_snk | got N` line; BenchError past the deadline."""
    while True:
        left = deadline_s - time.monotonic()
        if left <= 0:
            raise BenchError("the sink printed nothing in time")
        line = read_line(child, left)
        if line is None:
            raise BenchError(f"the sink's porch run ended: {child.stderr_tail()}")
        if line.startswith("cut_snk | got "):
            return int(line.rsplit(" ", 1)[1])


def bench_reconnect(settings: Settings) -> Sample:
    """A -> B on two namespace hosts; B's link is cut for `cut_s`: seconds from the link's
    return until B prints again (the goal is counted in beacon intervals)."""
    problem = netns_problem()
    if problem is not None:
        raise BenchSkipped(problem)
    prefix = f"pb{os.getpid() % 100000}"
    nodes = [Node("cut_src", RECONNECT_SOURCE, targets=("cut_snk",)),
             Node("cut_snk", RECONNECT_SINK, sources=1)]  # fmt: skip
    src, snk = write_graph(settings, "reconnect", nodes)
    env = settings_env(settings)
    try:
        (h1, _, eth1), (h2, _, eth2) = (
            line.split() for line in netns("up", "2", "--prefix", prefix).splitlines()
        )
        flags = ["--insecure", "--beacon-interval", str(BEACON_INTERVAL_S)]
        sink_cmd = ["ip", "netns", "exec", h2, porch_exe(), "run", str(snk), "--interface", eth2]
        src_cmd = ["ip", "netns", "exec", h1, porch_exe(), "run", str(src), "--interface", eth1]
        with (
            spawned([*sink_cmd, *flags], settings.workdir, env) as sink,
            spawned([*src_cmd, *flags], settings.workdir, env),
        ):
            got = [next_number(sink, time.monotonic() + 30.0) for _ in range(5)]
            subprocess.run(["ip", "-n", h2, "link", "set", eth2, "down"], check=True)
            cut_end = time.monotonic() + settings.sizes.cut_s
            try:
                while time.monotonic() < cut_end:  # nothing can arrive; read what was in flight
                    ready, _, _ = select.select([sink.stdout], [], [], cut_end - time.monotonic())
                    if ready:
                        got.append(next_number(sink, cut_end + 5.0))
            finally:
                subprocess.run(["ip", "-n", h2, "link", "set", eth2, "up"], check=True)
            restored = time.monotonic()
            got.append(next_number(sink, restored + 120.0))
            resume_s = time.monotonic() - restored
            got += [next_number(sink, time.monotonic() + 30.0) for _ in range(10)]
            notes = runtime_warnings(sink)
    finally:
        netns("down", "--prefix", prefix)
    expected = list(range(got[0], got[0] + len(got)))
    if got != expected:
        raise BenchError(f"values lost or repeated across the cut: {got[:40]}")
    return Sample({"resume_s": resume_s, "resume_beacons": resume_s / BEACON_INTERVAL_S},
                  notes=notes)  # fmt: skip


# An I/O-bound stage (issue 17): each step() waits 10 ms, as for an HTTP call or a query.
ASYNC_SLEEP_STAGE = (
    """\
import asyncio


async def step(input_data):
    await asyncio.sleep(0.01)
    for value in input_data.values():
        return value
"""
    + CPU_REPORT
)

SYNC_SLEEP_STAGE = (
    """\
import time


def step(input_data):
    time.sleep(0.01)
    for value in input_data.values():
        return value
"""
    + CPU_REPORT
)


def sleeping_stage(
    settings: Settings, prefix: str, script: str, concurrency: int, n: int
) -> Sample:
    """source -> a stage whose step() waits 10 ms (`concurrency` at once) -> counting sink."""
    nodes = [
        Node("bench_a", THROUGHPUT_SOURCE, ("bench_io",)),
        Node("bench_io", script, ("bench_b",), 1, config={"concurrency": concurrency}),
        Node("bench_b", THROUGHPUT_SINK, (), 1),
    ]
    got = run_porch(settings, prefix, nodes, "bench_b", n)
    return throughput_sample(got, n)


def bench_async_c100(settings: Settings) -> Sample:
    """The async 10 ms stage with concurrency 100."""
    return sleeping_stage(settings, "async100", ASYNC_SLEEP_STAGE, 100, settings.sizes.async_n)


def bench_async_c1(settings: Settings) -> Sample:
    """The async 10 ms stage with concurrency 1: one iteration at a time."""
    return sleeping_stage(settings, "async1", ASYNC_SLEEP_STAGE, 1, settings.sizes.slow_n)


def bench_sync_sleep(settings: Settings) -> Sample:
    """A sync stage whose step() sleeps 10 ms (the plain loop)."""
    return sleeping_stage(settings, "sync10ms", SYNC_SLEEP_STAGE, 1, settings.sizes.slow_n)


# A CPU-bound stage (issue 13): each step() burns 1 ms of this thread's CPU time (not wall time:
# a replica that waits for a core does not count the wait as work).
CPU_STAGE = (
    """\
import time

BURN_S = 0.001


def step(input_data):
    until = time.thread_time() + BURN_S
    while time.thread_time() < until:
        pass
    for value in input_data.values():
        return value
"""
    + CPU_REPORT
)


def cpu_stage_rate(settings: Settings, replicas: int) -> Sample:
    """source -> the 1 ms CPU stage with `replicas` worker processes -> counting sink."""
    n = settings.sizes.cpu_n
    nodes = [
        Node("bench_a", THROUGHPUT_SOURCE, ("bench_cpu",)),
        Node("bench_cpu", CPU_STAGE, ("bench_b",), 1, config={"replicas": replicas}),
        Node("bench_b", THROUGHPUT_SINK, (), 1),
    ]
    got = run_porch(settings, f"replicas{replicas}", nodes, "bench_b", n)
    return throughput_sample(got, n)


def bench_replicas(settings: Settings) -> Sample:
    """The 1 ms CPU stage with `"replicas": 2`, then with `"replicas": 1`, back to back (one
    round, one load): `rate` and `rate_r1`."""
    two = cpu_stage_rate(settings, 2)
    one = cpu_stage_rate(settings, 1)
    metrics = {"rate": two.metrics["rate"], "rate_r1": one.metrics["rate"]}
    # CPU per message of all processes (1,000 us of it the step's own): what replicas cost
    # beyond the work they share; on 2 cores, 2 x 1,000 / this bounds the ratio
    for suffix, sample in (("", two), ("_r1", one)):
        if "cpu_us_per_msg" in sample.metrics:
            metrics[f"cpu_us_per_msg{suffix}"] = sample.metrics["cpu_us_per_msg"]
    return Sample(metrics, two.count + one.count, two.expected + one.expected,
                  two.notes + one.notes)  # fmt: skip


BENCHMARKS: list[Benchmark] = [
    Benchmark("raw", "raw pyzmq PUSH->PULL, pickle per message", bench_raw),
    Benchmark("ceiling", "pyzmq+pickle, step() per msg, 100 values per frame", bench_ceiling),
    Benchmark("porch_chain", "porch A->B, acks on", bench_porch_chain),
    Benchmark("porch_chain_unacked", "porch A->B, at-most-once", bench_porch_chain_unacked),
    Benchmark("porch_chain4", "porch A->B->C->D", bench_porch_chain4),
    Benchmark("porch_chain4_unacked", "porch A->B->C->D, at-most-once", bench_porch_chain4_unacked),
    Benchmark("porch_diamond", "porch diamond A->(B,C)->D", bench_porch_diamond),
    Benchmark("raw_latency", "raw pyzmq one-way latency", bench_raw_latency),
    Benchmark("porch_latency", "porch A->B one-way latency", bench_porch_latency),
    Benchmark("raw_large", "raw pyzmq zero-copy 100 MB", bench_raw_large),
    Benchmark("porch_large", "porch A->B 100 MB numpy", bench_porch_large),
    Benchmark("tcp_large", "porch A->B 100 MB numpy, TCP+CURVE links", bench_tcp_large),
    Benchmark("startup", "porch run examples/diamond", bench_startup),
    Benchmark("many", "porch run, idle source->sink chains", bench_many, repeats=2),
    Benchmark(
        "many_starts",
        "porch run of idle chains, started again and again",
        bench_many_starts,
        repeats=1,
    ),
    Benchmark(
        "thousand",
        "porchd with 1,000 idle pipelines, seen by a 2nd porchd",
        bench_many1000,
        repeats=1,
    ),
    Benchmark("curve_chain", "porch A->B with a cluster key (CURVE)", bench_curve_chain),
    Benchmark("plain_chain", "porch A->B, --insecure (plain TCP)", bench_plain_chain),
    Benchmark("tcp_chain", "porch A->B, TCP+CURVE links", bench_tcp_chain),
    Benchmark("plain_1mb", "porch A->B 1 MB numpy, --insecure", bench_plain_1mb),
    Benchmark("curve_1mb", "porch A->B 1 MB numpy, CURVE", bench_curve_1mb),
    Benchmark("reconnect", "netns A->B, link cut, flow resumes", bench_reconnect, repeats=1),
    Benchmark("async_c100", "async step() awaiting 10 ms, concurrency 100", bench_async_c100),
    Benchmark("async_c1", "async step() awaiting 10 ms, concurrency 1", bench_async_c1),
    Benchmark("sync_sleep", "sync step() sleeping 10 ms", bench_sync_sleep),
    Benchmark("replicas", "step() burning 1 ms CPU, replicas 2 and 1", bench_replicas),
]

ROWS: list[Row] = [
    Row("A->B small msgs, acks on", "porch_chain.rate", "msgs/s",
        "raw.rate", "raw per-msg", ">=", 2.0, issue=12),
    Row("A->B small msgs vs ceiling", "porch_chain.rate", "msgs/s",
        "ceiling.rate", "ceiling", ">=", 0.4, issue=12),
    Row("acks on vs off (A->B)", "porch_chain.rate", "msgs/s",
        "porch_chain_unacked.rate", "at-most-once", ">=", 0.9, issue=12),
    Row("A->B CPU per msg, source", "porch_chain.cpu_us_bench_a", "us",
        op="<=", goal=1.5, issue=12),
    Row("A->B CPU per msg, sink", "porch_chain.cpu_us_bench_b", "us",
        op="<=", goal=1.5, issue=12),
    Row("A->B->C->D chain", "porch_chain4.rate", "msgs/s",
        "porch_chain.rate", "A->B", ">=", 0.4, issue=12),
    Row("A->B->C->D, at-most-once (info)", "porch_chain4_unacked.rate", "msgs/s",
        "porch_chain.rate", "A->B"),
    Row("diamond (fan-out 2, fan-in 2)", "porch_diamond.rate", "msgs/s",
        "porch_chain.rate", "A->B", ">=", 0.4, issue=12),
    Row("latency A->B p50 (200 msgs/s)", "porch_latency.p50_ms", "ms",
        "raw_latency.p50_ms", "raw", "<=", 1.5, issue=12),
    Row("latency A->B p99 (200 msgs/s)", "porch_latency.p99_ms", "ms",
        "raw_latency.p99_ms", "raw", "<=", 2.5, issue=12),
    Row("100 MB numpy A->B", "porch_large.mb_per_s", "MB/s",
        "raw_large.mb_per_s", "raw 0-copy", ">=", 0.5),
    Row("100 MB numpy A->B, ipc vs TCP+CURVE (info)", "porch_large.mb_per_s", "MB/s",
        "tcp_large.mb_per_s", "TCP+CURVE", issue=12),
    Row("porch run diamond: 1st output", "startup.first_output_s", "s", op="<=", goal=1.5),
    Row("{pipelines} pipelines: all linked", "many.linked_s", "s", op="<=", goal=4.0, issue=18),
    Row("{pipelines} pipelines: idle RSS (max)", "many.rss_max_mb", "MB", op="<=", goal=40.0),
    Row("{pipelines} pipelines: idle worker USS (median)", "many.uss_median_mb", "MB",
        op="<=", goal=8.0, issue=18),
    Row("{pipelines} pipelines: idle CPU (all)", "many.idle_cpu_pct", "% core", op="<=", goal=5.0),
    Row("{start_pipelines} pipelines, {starts} starts: slowest linked", "many_starts.linked_max_s",
        "s", op="<=", goal=10.0, issue=12),
    Row("{start_pipelines} pipelines, {starts} starts: median linked",
        "many_starts.linked_median_s", "s"),
    Row("1,000 pipelines: running, linked, seen", "thousand.all_s", "s", op="<=", goal=60.0,
        issue=18),
    Row("1,000 pipelines: idle CPU (all)", "thousand.idle_cpu_pct", "% core", op="<=",
        goal=100.0, issue=18),
    Row("1,000 pipelines: idle worker USS (median)", "thousand.uss_median_mb", "MB"),
    Row("1,000 pipelines: porchd idle", "thousand.porchd_idle_cpu_pct", "% core"),
    Row("{pipelines} pipelines: supervisor idle", "many.supervisor_idle_cpu_pct", "% core"),
    Row("CURVE vs plain, A->B small msgs", "curve_chain.rate", "msgs/s",
        "plain_chain.rate", "plain", ">=", 0.6, issue=5),
    Row("default (local secret) vs plain, A->B", "porch_chain.rate", "msgs/s",
        "plain_chain.rate", "plain", ">=", 0.9, issue=15),
    Row("A->B small msgs, ipc vs TCP+CURVE (info)", "porch_chain.rate", "msgs/s",
        "tcp_chain.rate", "TCP+CURVE", issue=12),
    Row("CURVE vs plain, A->B 1 MB msgs", "curve_1mb.mb_per_s", "MB/s",
        "plain_1mb.mb_per_s", "plain", issue=5),
    Row("resume after {cut_s} s cut (2 hosts)", "reconnect.resume_beacons", "beacons",
        op="<=", goal=2.0, issue=20),
    Row("async 10 ms stage, concurrency 100 vs 1", "async_c100.rate", "msgs/s",
        "async_c1.rate", "concurrency 1", ">=", 50.0, issue=17),
    Row("async 10 ms stage (conc. 1) vs sync", "async_c1.rate", "msgs/s",
        "sync_sleep.rate", "sync 10 ms", ">=", 0.95, issue=17),
    Row("replicas 2 vs 1 (1 ms CPU step)", "replicas.rate", "msgs/s",
        "replicas.rate_r1", "replicas 1", ">=", 1.8, issue=13),
]  # fmt: skip


# ---------------------------------------------------------------- driver


def measure(bench: Benchmark, settings: Settings, outcome: Outcome, rnd: int) -> None:
    """Run one repeat of `bench` (in round `rnd`), recording its sample or why it failed."""
    started = time.monotonic()
    try:
        sample = replace(bench.run(settings), round=rnd)
    except BenchError as exc:
        outcome.errors.append(str(exc))
        print(f"  {bench.name}: FAILED: {exc}", file=sys.stderr)
        return
    except BenchSkipped as exc:
        outcome.skipped = str(exc)
        print(f"  {bench.name}: skipped: {exc}", file=sys.stderr)
        return
    shown = " ".join(f"{k}={fmt_number(v)}" for k, v in sample.metrics.items())
    delivered = f" ({sample.count}/{sample.expected} delivered)" if sample.expected else ""
    wall_s = time.monotonic() - started
    if sample.lost:  # an error row, not a number: its rate and CPU figures stay out of medians
        error = f"round {rnd + 1}: only {sample.count} of {sample.expected} messages delivered"
        outcome.errors.append(error + "".join(f"; {note}" for note in sample.notes))
        print(f"  {bench.name}: FAILED: {error} (not counted: {shown}), wall {wall_s:.1f}s",
              file=sys.stderr)  # fmt: skip
        return
    outcome.samples.append(sample)
    print(f"  {bench.name}: {shown}{delivered}, wall {wall_s:.1f}s", file=sys.stderr)


def repeats_of(bench: Benchmark, repeats: int) -> int:
    """How often `bench` runs when the driver was asked for `repeats`."""
    return repeats if bench.repeats is None else min(bench.repeats, repeats)


def run_all(benches: Sequence[Benchmark], settings: Settings, repeats: int) -> list[Outcome]:
    """Run every benchmark its number of times, interleaved round by round."""
    outcomes = [Outcome(b) for b in benches]
    for rep in range(repeats):
        print(f"round {rep + 1}/{repeats}", file=sys.stderr)
        for outcome in outcomes:
            if rep < repeats_of(outcome.bench, repeats):
                measure(outcome.bench, settings, outcome, rep)
    return outcomes


@dataclass(frozen=True)
class Result:
    """A row of the table, evaluated."""

    row: Row
    value: float | None
    base: float | None
    figure: float | None  # the ratio (with a baseline) or the value
    verdict: str  # PASS, MISS, FAIL, "-" (no goal), "skipped", or "not run"
    errors: tuple[str, ...]


def paired_ratio(values: dict[int, float], bases: dict[int, float]) -> float | None:
    """Median over rounds of value / baseline of the same round: a benchmark and its baseline
    run back to back, so a round's ratio is measured under one load, even when the machine's
    load changes between rounds. Without common rounds: ratio of the medians."""
    ratios = [values[r] / bases[r] for r in values.keys() & bases.keys() if bases[r]]
    if ratios:
        return statistics.median(ratios)
    if values and bases and statistics.median(bases.values()):
        return statistics.median(values.values()) / statistics.median(bases.values())
    return None


def evaluate(row: Row, outcomes: dict[str, Outcome]) -> Result:
    """Compute one row from the outcomes."""

    def lookup(ref: str | None) -> tuple[Outcome | None, dict[int, float]]:
        if ref is None:
            return None, {}
        bench, metric = ref.split(".", 1)
        outcome = outcomes.get(bench)
        return outcome, outcome.by_round(metric) if outcome is not None else {}

    outcome, values = lookup(row.metric)
    base_outcome, bases = lookup(row.baseline)
    value = statistics.median(values.values()) if values else None
    base = statistics.median(bases.values()) if bases else None
    involved = [o for o in (outcome, base_outcome) if o is not None]
    errors = tuple(f"{o.bench.name}: {e}" for o in involved for e in o.errors)
    if outcome is None or (row.baseline is not None and base_outcome is None):
        return Result(row, value, base, None, "not run", errors)
    skipped = [o.skipped for o in involved if o.skipped and not o.samples]
    if skipped and not errors:
        return Result(row, value, base, None, "skipped", (f"skipped: {skipped[0]}",))
    figure = value if row.baseline is None else paired_ratio(values, bases)
    if errors or figure is None:
        verdict = "FAIL"
    elif row.goal is None:
        verdict = "-"
    else:
        met = figure >= row.goal if row.op == ">=" else figure <= row.goal
        verdict = "PASS" if met else "MISS"
    return Result(row, value, base, figure, verdict, errors)


def fmt_number(value: float | None) -> str:
    """A figure with sensible precision, or '-'."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def fmt_figure(result: Result) -> str:
    """The row's result: a ratio (`0.64x`) or a value in its unit."""
    if result.figure is None:
        return "-"
    if result.row.baseline is not None:
        return f"{result.figure:.2f}x"
    return f"{fmt_number(result.figure)} {result.row.unit}"


def fmt_goal(row: Row) -> str:
    """The goal as `>= 1.0x` or `<= 15 s`, or '-'."""
    if row.goal is None:
        return "-"
    if row.baseline is not None:
        shown = f"{row.goal:.1f}" if round(row.goal, 1) == row.goal else f"{row.goal:g}"
        return f"{row.op} {shown}x"
    return f"{row.op} {row.goal:g} {row.unit}"


TABLE_HEADER = (
    f"{'benchmark':<31} {'measured':>18}  {'baseline':<26} {'result':>10}  {'goal':<13} verdict"
)


def table_line(result: Result) -> str:
    """One line of the results table."""
    row = result.row
    measured = f"{fmt_number(result.value)} {row.unit}" if result.value is not None else "-"
    baseline = ""
    if row.baseline is not None:
        baseline = f"{row.baseline_label} {fmt_number(result.base)}"
    return (
        f"{row.label:<31} {measured:>18}  {baseline:<26} {fmt_figure(result):>10}  "
        f"{fmt_goal(row):<13} {result.verdict}"
    ).rstrip()


def git(*args: str) -> str:
    """A git command's output in this checkout, or '' when it fails."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def commit_info(exported: str | None) -> dict[str, Any]:
    """The commit measured: an exported one (--commit), or HEAD and whether the working tree's
    porch/ and workers/ differ from it (others' uncommitted edits are measured too)."""
    if exported is not None:
        return {"commit": exported[:12], "runtime": "exported commit", "runtime_dirty": False}
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "porch", "workers")
    return {
        "commit": git("rev-parse", "--short=12", "HEAD") or None,
        "runtime": "working tree",
        "runtime_dirty": bool(dirty),
    }


def export_runtime(rev: str, workdir: Path) -> tuple[str, Path]:
    """`git archive REV porch workers` into workdir/runtime: exactly one commit's code."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    if not commit:
        raise BenchError(f"--commit {rev}: not a commit of {ROOT}")
    target = workdir / "runtime"
    target.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "porch", "workers"],
        cwd=ROOT, capture_output=True, check=True,
    )  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return commit, target


def imported_runtime(settings: Settings) -> str:
    """Where `porch` children import porch from (checks that --commit took effect)."""
    cmd = [sys.executable, "-c", "import porch, workers; print(porch.__file__)"]
    env = settings_env(settings)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=settings.workdir)
    return str(Path(done.stdout.strip()).parent.parent) if done.returncode == 0 else "?"


def describe_run(settings: Settings, repeats: int, commit: dict[str, Any], quick: bool) -> str:
    """One line saying what was measured, where."""
    s = settings.sizes
    dirty = " + uncommitted runtime changes" if commit["runtime_dirty"] else ""
    if commit["runtime"] == "exported commit":
        dirty = " (exported)"
    return (
        f"{'QUICK smoke run (sizes reduced, verdicts indicative only); ' if quick else ''}"
        f"commit {commit['commit']}{dirty}; {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}; "
        f"up to {repeats} runs each (median); N={s.n:,} small msgs; latency "
        f"{s.latency_rate:g} msgs/s; {s.large_count} x {s.large_bytes // MB} MB; "
        f"{2 * s.chains} idle pipelines; load average {commit['load_average'][0]:g} at start, "
        f"{commit['load_average'][1]:g} at end"
    )


def print_report(results: Sequence[Result], outcomes: Sequence[Outcome], header: str) -> None:
    """The results table, every run's figures, then every problem."""
    sys.stderr.flush()
    print(f"\n{header}\n")
    print(TABLE_HEADER)
    for result in results:
        print(table_line(result))
    print("\nruns (each metric, every run):")
    for outcome in outcomes:
        for metric in outcome.metric_names():
            runs = " ".join(fmt_number(s.metrics.get(metric)) for s in outcome.samples)
            print(f"  {outcome.bench.name}.{metric}: {runs}")
    warned = [(o, note, count) for o in outcomes for note, count in o.notes().items()]
    if warned:
        print("\nwarnings Porch logged (not benchmark errors; [runs that logged it]):")
        for outcome, note, count in warned:
            print(f"  {outcome.bench.name} [{count}/{len(outcome.samples)}]: {note[:160]}")
    skipped = [(o.bench.name, o.skipped) for o in outcomes if o.skipped and not o.samples]
    if skipped:
        print("\nskipped (this machine cannot run them; not a failure):")
        for name, why in skipped:
            print(f"  {name}: {why}")
    problems = [(o.bench.name, e) for o in outcomes for e in o.errors]
    if problems:
        print("\nerrors:")
        for name, error in problems:
            print(f"  {name}: {error}")


def write_json(
    path: Path,
    results: Sequence[Result],
    outcomes: Sequence[Outcome],
    settings: Settings,
    repeats: int,
    commit: dict[str, Any],
) -> None:
    """Every row and every run, with the machine and commit it ran on."""
    report = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        **commit,
        "repeats": repeats,
        "sizes": asdict(settings.sizes),
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "pyzmq": zmq.pyzmq_version(),
            "libzmq": zmq.zmq_version(),
        },
        "rows": [
            {
                "label": r.row.label,
                "issue": r.row.issue,
                "metric": r.row.metric,
                "unit": r.row.unit,
                "median": r.value,
                "baseline": r.row.baseline,
                "baseline_median": r.base,
                "result": r.figure,
                "result_is_ratio": r.row.baseline is not None,
                "goal": None if r.row.goal is None else f"{r.row.op} {r.row.goal:g}",
                "verdict": r.verdict,
                "errors": list(r.errors),
            }
            for r in results
        ],
        "benchmarks": {
            o.bench.name: {
                "title": o.bench.title,
                "runs": [
                    s.metrics | {"round": s.round + 1, "count": s.count, "expected": s.expected}
                    for s in o.samples
                ],
                "medians": {m: o.median(m) for m in o.metric_names()},
                "errors": o.errors,
                "skipped": o.skipped or None,
                "runtime_warnings": o.notes(),
            }
            for o in outcomes
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def write_plot(path: Path, results: Sequence[Result], header: str) -> bool:
    """One small panel per row: the result as a bar, the goal as a dashed line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "matplotlib is not installed (make bench installs .[bench]): no plot", file=sys.stderr
        )
        return False
    shown = [r for r in results if r.figure is not None]
    if not shown:
        return False
    colors = {"PASS": "#2e7d32", "MISS": "#c62828", "FAIL": "#6d4c41"}
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 0.6 * len(shown) + 1.2), squeeze=False)
    for ax, result in zip(axes[:, 0], shown, strict=True):
        figure = result.figure or 0.0
        goal = result.row.goal
        ax.barh([0], [figure], color=colors.get(result.verdict, "#90a4ae"), height=0.6)
        if goal is not None:
            ax.axvline(goal, color="black", linestyle="--", linewidth=1.2)
        ax.set_xlim(0, max(figure, goal or 0.0) * 1.15 or 1.0)
        ax.set_ylim(-0.6, 0.6)
        ax.set_yticks([0])
        ax.set_yticklabels([result.row.label], fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        if result.row.goal is None:
            text = f"{fmt_figure(result)}   (no goal)"
        else:
            text = f"{fmt_figure(result)}   goal {fmt_goal(result.row)}   {result.verdict}"
        ax.text(1.01, 0.5, text, transform=ax.transAxes, ha="left", va="center", fontsize=8)
    fig.suptitle("Porch benchmarks: result vs goal (dashed)", fontsize=10)
    fig.text(0.5, 0.005, textwrap.fill(header, 150), ha="center", va="bottom", fontsize=6)
    fig.tight_layout(rect=(0, 0.05, 0.76, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """0 when every benchmark ran cleanly (missed goals included), 1 when any failed."""
    return 1 if any(o.errors for o in outcomes) else 0


# ---------------------------------------------------------------- profile (--profile)

PROFILE_N = 100_000_000  # the chain runs far longer than the profile; it is killed after


def self_time(raw: Path) -> tuple[int, list[tuple[str, int]]]:
    """Samples in a `py-spy record -f raw` file, and self samples per function (innermost
    frame of each stack, line numbers dropped), most first."""
    total, by_function = 0, dict[str, int]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frame = stack.split(";")[-1]
        name, _, where = frame.partition(" (")
        function = f"{name} ({where.rsplit(':', 1)[0]})" if where else name
        total += int(count)
        by_function[function] = by_function.get(function, 0) + int(count)
    return total, sorted(by_function.items(), key=lambda item: -item[1])


def profile_chain(settings: Settings, out_dir: Path, seconds: int, top: int) -> int:
    """py-spy the source and sink workers of the A -> B chain benchmark while it streams."""
    py_spy = porch_exe("py-spy")
    if not Path(py_spy).exists():
        print(f"{py_spy} not found: pip install py-spy", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = write_graph(settings, "profile", chain(["bench_a", "bench_b"]))
    cmd = [porch_exe(), "run", *map(str, configs), "--iterations", str(PROFILE_N)]
    with spawned(cmd, settings.workdir, settings_env(settings)) as child:
        time.sleep(3.0)  # started, linked, streaming
        workers = {}
        for proc in worker_processes(child.proc.pid):
            workers[worker_name(proc)] = proc.pid
        if set(workers) != {"bench_a", "bench_b"}:
            print(f"expected workers bench_a and bench_b, found {workers}", file=sys.stderr)
            return 1
        spies = {
            name: subprocess.Popen(
                [py_spy, "record", "-p", str(pid), "-d", str(seconds), "-f", "raw", "-o",
                 str(out_dir / f"{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            for name, pid in workers.items()
        }  # fmt: skip
        for name, spy in spies.items():
            _, err = spy.communicate(timeout=seconds + 30)
            if spy.returncode != 0:
                print(f"py-spy on {name} failed: {err.strip()}", file=sys.stderr)
                return 1
    for name, role in (("bench_a", "source"), ("bench_b", "sink")):
        total, functions = self_time(out_dir / f"{name}.txt")
        print(f"\n{role} ({name}): {total} samples, top self time")
        for function, count in functions[:top]:
            print(f"  {100 * count / max(total, 1):5.1f}%  {function}")
    print(f"\nraw stacks in {out_dir} (flamegraph.pl or speedscope read them)")
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The driver's command line."""
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run each (smoke)")
    parser.add_argument("--n", type=int, help=f"small messages per run (default {FULL.n:,})")
    parser.add_argument(
        "--repeats", type=int, help=f"runs per benchmark (default {DEFAULT_REPEATS})"
    )
    parser.add_argument("--only", action="append", choices=names, help="repeatable")
    parser.add_argument("--timeout-s", type=float, help="per run (default scales with N)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON; the PNG goes beside")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="instead: py-spy the A->B chain's workers for 5 s, print top self time, keep in DIR",
    )
    parser.add_argument(
        "--commit",
        metavar="REV",
        help="measure porch/ and workers/ of this commit (git archive) instead of the working "
        "tree, which may hold others' uncommitted edits",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    """Run the selected benchmarks, print the table, write the JSON and the plot."""
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.n:
        sizes = Sizes(**(asdict(sizes) | {"n": args.n}))
    repeats = args.repeats or (1 if args.quick else DEFAULT_REPEATS)
    # Generous: a slow runtime should report a low number, not a timeout.
    timeout_s = args.timeout_s or 60.0 + sizes.n / 5_000
    benches = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="porch-bench-") as tmp:
        workdir = Path(tmp)
        exported, pythonpath = None, None
        if args.commit:
            try:
                exported, runtime = export_runtime(args.commit, workdir)
            except BenchError as exc:
                print(f"bench: {exc}", file=sys.stderr)
                return 2
            pythonpath = str(runtime)
        settings = Settings(sizes, timeout_s, workdir, pythonpath)
        commit = commit_info(exported) | {"imported_from": imported_runtime(settings)}
        print(f"porch imported from {commit['imported_from']}", file=sys.stderr)
        if args.profile:
            return profile_chain(settings, args.profile, seconds=5, top=15)
        outcomes = run_all(benches, settings, repeats)
    commit["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    by_name = {o.bench.name: o for o in outcomes}
    labels = {"pipelines": 2 * sizes.chains, "cut_s": f"{sizes.cut_s:g}",
              "start_pipelines": 2 * sizes.start_chains, "starts": sizes.starts}  # fmt: skip
    rows = [replace(row, label=row.label.format(**labels)) for row in ROWS]
    results = [evaluate(row, by_name) for row in rows]
    results = [r for r in results if r.verdict != "not run"]
    header = describe_run(settings, repeats, commit, args.quick)
    print_report(results, outcomes, header)
    write_json(args.out, results, outcomes, settings, repeats, commit)
    png = args.out.with_suffix(".png")
    wrote_png = write_plot(png, results, header)
    print(f"\nwrote {args.out}" + (f" and {png}" if wrote_png else ""))
    return exit_code(outcomes)


CHILDREN: dict[str, Callable[[Sequence[str]], int]] = {
    "_raw-push": raw_push,
    "_raw-pull": raw_pull,
    "_ceil-push": ceiling_push,
    "_ceil-pull": ceiling_pull,
    "_lat-push": lat_push,
    "_lat-pull": lat_pull,
    "_big-push": big_push,
    "_big-pull": big_pull,
}

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] in CHILDREN:
        sys.exit(CHILDREN[argv[0]](argv[1:]))
    sys.exit(main(argv))
