"""Discovery on one host (loopback): several `porch run` and porchd find each other's pipelines
by UDP beacons on a private discovery port (tests/conftest.py picks a free one per test)."""

from __future__ import annotations

import json
import os
import socket
import textwrap
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.conftest import Porchd, PorchRun

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

StartRun = Callable[..., PorchRun]
StartDaemon = Callable[..., Porchd]
WAIT_S = 20.0

COUNTER = """
    import time
    n = 0
    def step():
        global n
        n += 1
        time.sleep({sleep_s})
        return n
"""
PRINTER = """
    def step(input_data):
        print("got", input_data["{source}"])
"""


def pipeline(folder: Path, name: str, script: str, sources: int = 0,
             targets: tuple[str, ...] = ()) -> str:  # fmt: skip
    """Write NAME.json and NAME.py into `folder` (created); return the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(script))
    config = {"name": name, "scripts": [f"{name}.py"], "source_pipeline_count": sources,
              "target_pipeline_names": list(targets)}  # fmt: skip
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


def counter(folder: Path, name: str, target: str, sleep_s: float = 0.05) -> str:
    return pipeline(folder, name, COUNTER.format(sleep_s=sleep_s), targets=(target,))


def printer(folder: Path, name: str, source: str) -> str:
    return pipeline(folder, name, PRINTER.format(source=source), sources=1)


def events(lines: list[str], event: str) -> list[dict[str, object]]:
    """The JSON log records with this event name among `lines`."""
    found = []
    for line in list(lines):
        text = line.split(" | ", 1)[-1]
        if f'"{event}"' not in text:
            continue
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def test_two_porch_run_on_one_host_dporch_tutorial(tmp_path: Path, porch_cli: StartRun) -> None:
    """DPorch's tutorial: pipeline_b in one terminal, pipeline_a in another."""
    sink = porch_cli("run", printer(tmp_path / "b", "pipeline_b", "pipeline_a"))
    source = porch_cli("run", counter(tmp_path / "a", "pipeline_a", "pipeline_b"),
                       "--iterations", "5")  # fmt: skip
    assert source.wait_exit(WAIT_S) == 0, source.report()
    assert sink.wait_exit(WAIT_S) == 0, sink.report()
    assert sink.lines_of("pipeline_b") == [f"got {n}" for n in range(1, 6)]


def test_target_started_later_gets_everything(tmp_path: Path, porch_cli: StartRun) -> None:
    """The source runs first and ends; its output is held until the target appears (3 s)."""
    source = porch_cli("run", counter(tmp_path / "a", "early", "late", sleep_s=0.01),
                       "--iterations", "20")  # fmt: skip
    time.sleep(3.0)  # the scenario itself: the target starts 3 s later
    sink = porch_cli("run", printer(tmp_path / "b", "late", "early"))
    assert sink.wait_exit(WAIT_S) == 0, sink.report()
    assert source.wait_exit(WAIT_S) == 0, source.report()
    assert sink.lines_of("late") == [f"got {n}" for n in range(1, 21)]


def test_two_porchd_on_one_host(tmp_path: Path, porchd: StartDaemon) -> None:
    d1 = porchd(printer(tmp_path / "c1", "sink_one", "source_one"), home=tmp_path / "d1")
    d2 = porchd(counter(tmp_path / "c2", "source_one", "sink_one"), home=tmp_path / "d2")
    d1.wait_until(lambda: len(d1.output("sink_one")) >= 5, WAIT_S, "sink_one got 5")
    got = d1.output("sink_one")[:5]
    assert got == [f"got {n}" for n in range(1, 6)], d2.report()
    status = d1.status()
    remote = [r for r in status["remote"] if r["name"] == "source_one"]
    assert remote and remote[0]["host"] == "127.0.0.1" and remote[0]["last_seen_s"] < 3
    assert status["daemon"]["discovery"]["beacons_received"] > 0
    graph = json.loads(d2.ctl("graph", "--format", "json").stdout)
    hosts = {n["name"]: n.get("host") for n in graph["nodes"]}
    assert hosts.get("sink_one") == "127.0.0.1", graph
    table = d1.ctl("status").stdout
    assert "REMOTE" in table and "source_one" in table and "LAST SEEN" in table, table


def timestamp(record: dict[str, object]) -> float:
    return datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_convergence_within_two_beacon_intervals(tmp_path: Path, porchd: StartDaemon) -> None:
    """From a pipeline's endpoint being known to its porchd until a peer hands it out."""
    d1 = porchd(printer(tmp_path / "c1", "conv_sink", "conv_source"), home=tmp_path / "d1")
    # d1 is settled (past its start-up warm-up) when the new pipeline appears elsewhere
    d1.wait_until(lambda: d1.status()["daemon"]["uptime_s"] > 1.0 if d1.control.exists() else
                  False, WAIT_S, "d1 settled")  # fmt: skip
    d2 = porchd(printer(tmp_path / "c2", "conv_other", "nobody"), home=tmp_path / "d2")
    found = d1.wait_until(
        lambda: [e for e in events(d1.stderr, "remote_pipeline")
                 if e["pipeline"] == "conv_other" and e["endpoint"]],
        WAIT_S,
        "conv_other's endpoint known to d1",
    )  # fmt: skip
    ready = d2.wait_until(
        lambda: [e for e in events(d2.stderr, "worker_endpoint") if e["pipeline"] == "conv_other"],
        WAIT_S,
        "conv_other's endpoint known to d2",
    )
    convergence_s = timestamp(found[0]) - timestamp(ready[0])
    print(f"\nconvergence: {convergence_s * 1000:.0f} ms (beacon interval 1 s)")
    assert convergence_s < 2.0


def test_duplicate_name_is_a_loud_error_on_both_sides(tmp_path: Path, porchd: StartDaemon) -> None:
    """d1 runs dup_source -> dup_sink and dup_sink; d2 runs another dup_sink: both say so, the
    local dup_sink gets the data, d2's gets none."""
    d1 = porchd(
        counter(tmp_path / "c1", "dup_source", "dup_sink"),
        printer(tmp_path / "c1", "dup_sink", "dup_source"),
        home=tmp_path / "d1",
    )
    d2 = porchd(printer(tmp_path / "c2", "dup_sink", "dup_source"), home=tmp_path / "d2")
    for daemon in (d1, d2):
        daemon.wait_until(lambda d=daemon: events(d.stderr, "duplicate_pipeline"), WAIT_S,
                          "duplicate_pipeline error")  # fmt: skip
    ids = [d.status()["daemon"]["discovery"]["daemon_id"][:8] for d in (d1, d2)]
    for daemon in (d1, d2):
        record = events(daemon.stderr, "duplicate_pipeline")[0]
        assert record["level"] == "error" and record["pipeline"] == "dup_sink"
        hosts = " ".join(map(str, record["hosts"]))  # type: ignore[call-overload]
        assert all(i in hosts for i in ids), record
    d1.wait_until(lambda: len(d1.output("dup_sink")) >= 5, WAIT_S, "local dup_sink got data")
    assert d2.output("dup_sink") == []
    conflicts = d2.status()["daemon"]["discovery"]["conflicts"]
    assert [c["name"] for c in conflicts] == ["dup_sink"]


def test_garbage_datagrams_are_counted_not_fatal(
    tmp_path: Path, porchd: StartDaemon, private_discovery: int
) -> None:
    d1 = porchd(printer(tmp_path / "c1", "calm_sink", "calm_source"), home=tmp_path / "d1")
    d1.wait_until(lambda: events(d1.stderr, "discovery_started"), WAIT_S, "discovery")
    junk = [b"", b"\x00" * 10, b"PRCH\x01\x00{", b"PRCH\x01\x00[]", os.urandom(1200),
            b"PRCH\x01\x00" + json.dumps({"v": 1, "entries": [1, 2]}).encode()]  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in junk:
            sock.sendto(data, ("127.0.0.1", private_discovery))
    rejected = d1.wait_until(
        lambda: d1.status()["daemon"]["discovery"]["beacons_rejected"] >= len(junk) - 1,
        WAIT_S,
        "rejected counter",
    )
    assert rejected
    assert d1.pipeline("calm_sink")["state"] in ("waiting for sources", "running")


def test_non_loopback_interface_without_key_is_refused(tmp_path: Path, porch_cli: StartRun) -> None:
    # refused while planning, before any socket exists: nothing is sent to that address
    run = porch_cli("run", counter(tmp_path, "lonely", "nobody"), "--peer", "198.51.100.7:5557")
    assert run.wait_exit(WAIT_S) == 2, run.report()
    text = "\n".join(run.stderr)
    assert "loopback only" in text and "--insecure" in text, text
