"""Throughput benchmarks: Porch pipelines against a raw pyzmq PUSH/PULL baseline.

Run it as `make bench` (or `.venv/bin/python scripts/bench.py [--quick] [--n N] [--only NAME]`).
Each benchmark runs `--repeats` times, interleaved with the others so machine noise hits them
alike; the medians go into a table on stdout and into `bench-results/bench.json`. A benchmark
with a floor passes when its median is at least `floor` times the raw baseline's median.

New benchmarks are functions `(Settings) -> Sample` added to `BENCHMARKS`. Child processes of
this file are started with a hidden sub-command (`_raw-push`, `_raw-pull`).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
import zmq

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_N = 1_000_000
QUICK_N = 20_000
DEFAULT_REPEATS = 3
DEFAULT_OUT = ROOT / "bench-results" / "bench.json"
# Seconds a consumer waits for the next message once the stream has started.
IDLE_TIMEOUT_S = 10.0
KILL_GRACE_S = 5.0
BENCH_LINE_RE = re.compile(r"BENCH count=(\d+) seconds=(\S+)")


class BenchError(Exception):
    """A benchmark run that could not produce a number (crash, hang, unparseable output)."""


@dataclass(frozen=True)
class Settings:
    """What every benchmark run needs to know."""

    n: int
    timeout_s: float
    workdir: Path


@dataclass(frozen=True)
class Sample:
    """One run of one benchmark: its rate and what was delivered of what was sent."""

    msgs_per_s: float
    count: int
    expected: int
    seconds: float

    @property
    def lost(self) -> int:
        """Messages sent but never counted by the consumer."""
        return self.expected - self.count


@dataclass(frozen=True)
class Benchmark:
    """A named measurement; `floor` is the minimum ratio to the raw baseline, if any."""

    name: str
    title: str
    run: Callable[[Settings], Sample]
    floor: float | None = None


@dataclass
class Outcome:
    """Everything one benchmark produced over all its repeats."""

    bench: Benchmark
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        """Median msgs/s over the runs that produced a number."""
        rates = [s.msgs_per_s for s in self.samples]
        return statistics.median(rates) if rates else None


# ---------------------------------------------------------------- child processes


def descendants(pid: int) -> list[psutil.Process]:
    """Every live process below `pid`, so a kill can reach children in their own groups."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """Stop `proc` gently, then kill it and every process it started, by pid."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=KILL_GRACE_S)
    for child in tree:
        with suppress(psutil.NoSuchProcess):
            child.kill()


@contextmanager
def spawned(cmd: Sequence[str]) -> Iterator[subprocess.Popen[str]]:
    """Start `cmd` with piped text output; whatever is still running on exit is killed."""
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        kill_tree(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def finish(proc: subprocess.Popen[str], what: str, timeout_s: float) -> str:
    """Wait for `proc` to exit 0 and return its stdout; raise BenchError otherwise."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} still running after {timeout_s:.0f}s (hang?)") from exc
    if proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-5:])
        raise BenchError(f"{what} exited {proc.returncode}: {tail}")
    return out


def read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The first line `proc` prints, waiting at most `timeout_s`."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise BenchError(f"no output from pid {proc.pid} within {timeout_s:.0f}s")
    return proc.stdout.readline().strip()


def parse_bench_line(out: str, prefix: str, expected: int) -> Sample:
    """Build a Sample from the `BENCH count=N seconds=S` line that follows `prefix`."""
    pattern = re.compile(r"^" + re.escape(prefix) + BENCH_LINE_RE.pattern + r"$", re.M)
    match = pattern.search(out)
    if match is None:
        raise BenchError(f"no '{prefix}BENCH count=... seconds=...' line in output")
    count, seconds = int(match.group(1)), float(match.group(2))
    if seconds <= 0:
        raise BenchError(f"consumer timed {count} messages in {seconds}s; cannot rate it")
    return Sample(count / seconds, count, expected, seconds)


# ---------------------------------------------------------------- raw pyzmq baseline


def raw_push(args: Sequence[str]) -> int:
    """Child: bind PUSH on a free port, print it, send N pickled ints."""
    n, linger_ms = int(args[0]), int(args[1])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.bind("tcp://127.0.0.1:0")
    print(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1], flush=True)
    for i in range(n):
        sock.send(pickle.dumps(i, protocol=5))
    sock.close()
    ctx.term()
    return 0


def raw_pull(args: Sequence[str]) -> int:
    """Child: connect PULL, unpickle and count N messages, print the BENCH line."""
    port, n, first_timeout_ms = int(args[0]), int(args[1]), int(args[2])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    count, first, last = 0, 0.0, 0.0
    timeout_ms = first_timeout_ms
    while count < n and sock.poll(timeout_ms):
        pickle.loads(sock.recv())
        last = time.perf_counter()
        if count == 0:
            first, timeout_ms = last, int(IDLE_TIMEOUT_S * 1000)
        count += 1
    print(f"BENCH count={count} seconds={last - first}", flush=True)
    sock.close()
    ctx.term()
    return 0


def self_cmd(*args: object) -> list[str]:
    """A command line that runs this file with the given hidden sub-command."""
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


def bench_raw(settings: Settings) -> Sample:
    """Raw pyzmq: one PUSH process, one PULL process, pickled ints, one frame each."""
    timeout_ms = int(settings.timeout_s * 1000)
    with spawned(self_cmd("_raw-push", settings.n, timeout_ms)) as push:
        port = read_line(push, settings.timeout_s)
        if not port.isdigit():
            raise BenchError(f"producer printed {port!r} instead of its port")
        with spawned(self_cmd("_raw-pull", port, settings.n, timeout_ms)) as pull:
            out = finish(pull, "raw consumer", settings.timeout_s)
        finish(push, "raw producer", KILL_GRACE_S)
    return parse_bench_line(out, "", settings.n)


# ---------------------------------------------------------------- porch pipelines

SOURCE_SCRIPT = """\
counter = 0


def step():
    global counter
    value = counter
    counter += 1
    return value
"""

SINK_SCRIPT = """\
import time

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
    print(f"BENCH count={count} seconds={last - first}", flush=True)
"""


def write_pipeline(folder: Path, name: str, script: str, sources: int, targets: list[str]) -> Path:
    """Write `name.py` and `name.json` (contract format) into `folder`; return the config."""
    (folder / f"{name}.py").write_text(textwrap.dedent(script))
    config = {
        "name": name,
        "scripts": [f"{name}.py"],
        "source_pipeline_count": sources,
        "target_pipeline_names": targets,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def porch_exe() -> str:
    """The `porch` console script installed beside the running interpreter."""
    return str(Path(sys.executable).parent / "porch")


def run_porch(configs: Sequence[Path], settings: Settings, sink: str) -> Sample:
    """`porch run` the configs for N iterations; read the sink's BENCH line."""
    cmd = [porch_exe(), "run", *map(str, configs), "--iterations", str(settings.n)]
    with spawned(cmd) as proc:
        out = finish(proc, "porch run", settings.timeout_s)
    return parse_bench_line(out, f"{sink} | ", settings.n)


def bench_porch_chain(settings: Settings) -> Sample:
    """Porch: a source pipeline feeding a sink pipeline, one int per iteration."""
    folder = Path(tempfile.mkdtemp(prefix="chain-", dir=settings.workdir))
    src = write_pipeline(folder, "bench_src", SOURCE_SCRIPT, 0, ["bench_sink"])
    sink = write_pipeline(folder, "bench_sink", SINK_SCRIPT, 1, [])
    return run_porch([src, sink], settings, "bench_sink")


BENCHMARKS: list[Benchmark] = [
    Benchmark("raw", "raw pyzmq PUSH->PULL", bench_raw),
    Benchmark("porch_chain", "porch src->sink", bench_porch_chain, floor=0.25),
]
BASELINE = "raw"


# ---------------------------------------------------------------- driver


def measure(bench: Benchmark, settings: Settings, outcome: Outcome) -> None:
    """Run one repeat of `bench`, recording its sample or why it failed."""
    started = time.monotonic()
    try:
        sample = bench.run(settings)
    except BenchError as exc:
        outcome.errors.append(str(exc))
        print(f"  {bench.name}: FAILED: {exc}", file=sys.stderr)
        return
    outcome.samples.append(sample)
    if sample.lost:
        outcome.errors.append(f"lost {sample.lost} of {sample.expected} messages")
    wall_s = time.monotonic() - started
    print(
        f"  {bench.name}: {sample.msgs_per_s:,.0f} msgs/s "
        f"({sample.count}/{sample.expected} in {sample.seconds:.3f}s, wall {wall_s:.1f}s)",
        file=sys.stderr,
    )


def run_all(benches: Sequence[Benchmark], settings: Settings, repeats: int) -> list[Outcome]:
    """Run every benchmark `repeats` times, interleaved round by round."""
    outcomes = [Outcome(b) for b in benches]
    for rep in range(1, repeats + 1):
        print(f"round {rep}/{repeats}", file=sys.stderr)
        for outcome in outcomes:
            measure(outcome.bench, settings, outcome)
    return outcomes


def verdict(outcome: Outcome, baseline: float | None) -> tuple[float | None, str]:
    """The ratio of `outcome` to the baseline median and PASS/MISS/FAIL (or '' without floor)."""
    median = outcome.median
    ratio = median / baseline if median and baseline else None
    if outcome.errors:
        return ratio, "FAIL"
    if outcome.bench.floor is None:
        return ratio, ""
    if ratio is None:
        return None, "FAIL"
    return ratio, "PASS" if ratio >= outcome.bench.floor else "MISS"


def baseline_median(outcomes: Sequence[Outcome]) -> float | None:
    """The raw baseline's median msgs/s, if it ran."""
    return next((o.median for o in outcomes if o.bench.name == BASELINE), None)


def fmt_rate(rate: float | None) -> str:
    """A msgs/s figure with thousands separators, or '-'."""
    return "-" if rate is None else f"{rate:,.0f}"


def table_row(outcome: Outcome, baseline: float | None) -> str:
    """One table line: name, each run, median, ratio, floor and verdict."""
    ratio, mark = verdict(outcome, baseline)
    runs = " ".join(fmt_rate(s.msgs_per_s) for s in outcome.samples) or "-"
    floor = "-" if outcome.bench.floor is None else f">={outcome.bench.floor:.2f}"
    ratio_s = "-" if ratio is None or outcome.bench.name == BASELINE else f"{ratio:.3f}"
    return (
        f"{outcome.bench.title:<24} {runs:<36} {fmt_rate(outcome.median):>12} "
        f"{ratio_s:>7} {floor:>6} {mark}"
    ).rstrip()


def print_table(outcomes: Sequence[Outcome], settings: Settings) -> None:
    """Print the results table, then each benchmark's problems."""
    baseline = baseline_median(outcomes)
    print(f"\nN={settings.n:,} messages per run\n")
    print(
        f"{'benchmark':<24} {'runs (msgs/s)':<36} {'median':>12} {'ratio':>7} {'floor':>6} verdict"
    )
    for outcome in outcomes:
        print(table_row(outcome, baseline))
    for outcome in outcomes:
        for error in outcome.errors:
            print(f"{outcome.bench.name}: {error}")


def outcome_json(outcome: Outcome, baseline: float | None) -> dict[str, object]:
    """One benchmark's results as a JSON-ready dict."""
    ratio, mark = verdict(outcome, baseline)
    return {
        "title": outcome.bench.title,
        "runs": [asdict(s) | {"lost": s.lost} for s in outcome.samples],
        "median_msgs_per_s": outcome.median,
        "ratio_to_baseline": ratio,
        "floor": outcome.bench.floor,
        "verdict": mark or None,
        "errors": outcome.errors,
    }


def write_json(path: Path, outcomes: Sequence[Outcome], settings: Settings, repeats: int) -> None:
    """Write every result, with the machine it ran on, to `path`."""
    baseline = baseline_median(outcomes)
    report = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "n": settings.n,
        "repeats": repeats,
        "baseline": BASELINE,
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "pyzmq": zmq.pyzmq_version(),
            "libzmq": zmq.zmq_version(),
        },
        "benchmarks": {o.bench.name: outcome_json(o, baseline) for o in outcomes},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The driver's command line."""
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"N={QUICK_N:,} (smoke test)")
    parser.add_argument("--n", type=int, help=f"messages per run (default {DEFAULT_N:,})")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--only", action="append", choices=names, help="repeatable")
    parser.add_argument("--timeout-s", type=float, help="per run (default scales with N)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """0 when every benchmark ran cleanly and met its floor, 1 otherwise."""
    baseline = baseline_median(outcomes)
    return 0 if all(verdict(o, baseline)[1] in ("", "PASS") for o in outcomes) else 1


def main(argv: Sequence[str]) -> int:
    """Run the selected benchmarks, print the table, write the JSON."""
    args = parse_args(argv)
    n = args.n or (QUICK_N if args.quick else DEFAULT_N)
    # Generous: a slow runtime should report a low number, not a timeout.
    timeout_s = args.timeout_s or 60.0 + n / 5_000
    benches = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    with tempfile.TemporaryDirectory(prefix="porch-bench-") as tmp:
        settings = Settings(n=n, timeout_s=timeout_s, workdir=Path(tmp))
        outcomes = run_all(benches, settings, args.repeats)
    print_table(outcomes, settings)
    write_json(args.out, outcomes, settings, args.repeats)
    print(f"\nwrote {args.out}")
    return exit_code(outcomes)


CHILDREN: dict[str, Callable[[Sequence[str]], int]] = {
    "_raw-push": raw_push,
    "_raw-pull": raw_pull,
}

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] in CHILDREN:
        sys.exit(CHILDREN[argv[0]](argv[1:]))
    sys.exit(main(argv))
