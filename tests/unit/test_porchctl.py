"""`porchctl`: the status table, and the client against a fake porchd on a real ipc:// socket."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from click.testing import CliRunner, Result

from porch import logfiles, porchctl
from porch.porchctl import (
    Client,
    CommandFailed,
    DaemonUnreachable,
    format_status,
    human_duration,
    human_mib,
)

pytestmark = pytest.mark.timeout(30)

READY_TIMEOUT_S = 5.0
POLL_MS = 20
HINT = (
    "is porchd running? start it with 'porchd start CONFIG...', "
    "or point at another with --control PATH or PORCH_CONTROL"
)

STATUS = {
    "daemon": {
        "pid": 100,
        "control": "/run/porch/porchd.sock",
        "state_dir": "/var/lib/porch/default",
        "uptime_s": 400.0,
        "version": "0.2.0",
    },
    "pipelines": [
        {
            "name": "generator",
            "pid": 4242,
            "state": "running",
            "uptime_s": 192.7,
            "iterations": 1200,
            "msgs_in": 0,
            "msgs_out": 1200,
            "queue_depth": 0,
            "rate_per_s": 6.25,
            "cpu_percent": 12.0,
            "rss_bytes": 42 * 2**20 + 2**19,
            "restarts": 0,
            "last_error": "",
            "restart_policy": "on-failure",
            "config": "/etc/porch/pipelines/generator.json",
        },
        {
            "name": "sink",
            "pid": None,
            "state": "failed",
            "uptime_s": None,
            "iterations": 3,
            "msgs_in": 3,
            "msgs_out": 0,
            "queue_depth": 7,
            "rate_per_s": 0.0,
            "cpu_percent": None,
            "rss_bytes": None,
            "restarts": 5,
            "last_error": "ValueError: bad record 17\n(in step, sink.py line 9) " + "x" * 60,
            "restart_policy": "on-failure",
            "config": "/etc/porch/pipelines/sink.json",
        },
    ],
}


# --- format_status ---


def table(result: dict[str, Any], width: int | None = None) -> list[str]:
    return format_status(result, width).splitlines()


def test_status_table_has_a_header_and_one_line_per_pipeline() -> None:
    lines = table(STATUS)
    assert lines[0].split() == [
        "PIPELINE", "PID", "STATE", "UPTIME", "ITER", "IN", "OUT", "QUEUE", "MSG/S", "CPU%",
        "RSS", "RESTARTS", "LAST", "ERROR",
    ]  # fmt: skip
    assert len(lines) == 3
    assert lines[1].split() == [
        "generator", "4242", "running", "3m12s", "1200", "0", "1200", "0", "6.2", "12.0",
        "42.5MiB", "0", "-",
    ]  # fmt: skip


def test_status_shows_unknowns_as_dashes_and_the_error_on_one_line() -> None:
    row = table(STATUS)[2]
    cells = row.split()
    assert cells[:4] == ["sink", "-", "failed", "-"]
    assert cells[9:12] == ["-", "-", "5"]
    assert row.endswith("ValueError: bad record 17 (in step, sink.py line 9) " + "x" * 60)


def test_status_columns_are_sized_to_content_and_aligned() -> None:
    header, first, second = table(STATUS)
    error_at = header.index("LAST ERROR")
    assert second.index("ValueError") == error_at
    assert first[error_at:] == "-"
    # PIPELINE is as wide as its longest cell ("generator") plus the two-space gap
    assert header.index("PID") == len("generator") + 2 + (len("4242") - len("PID"))


def test_status_cuts_the_last_error_to_the_width() -> None:
    lines = table(STATUS, width=120)
    assert max(len(line) for line in lines) == 120
    assert lines[2].endswith("...")
    assert lines[1].endswith("-")


def test_status_keeps_some_of_the_error_on_a_narrow_terminal() -> None:
    error = table(STATUS, width=40)[2].split("  ")[-1]
    assert error == "ValueError: bad r..."  # MIN_ERROR_WIDTH


def test_status_without_pipelines_is_just_the_header() -> None:
    assert table({"daemon": STATUS["daemon"], "pipelines": []}) == [
        "PIPELINE  PID  STATE  UPTIME  ITER  IN  OUT  QUEUE  MSG/S  CPU%  RSS  RESTARTS  LAST ERROR"
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.4, "0s"), (5, "5s"), (59.9, "59s"), (60, "1m00s"), (192, "3m12s"),
     (2 * 3600 + 4 * 60 + 30, "2h04m"), (3 * 86400 + 5 * 3600, "3d05h")],
)  # fmt: skip
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


def test_human_mib() -> None:
    assert (human_mib(None), human_mib(0), human_mib(3 * 2**20)) == ("-", "0.0MiB", "3.0MiB")


# --- a fake porchd ---


class FakeDaemon:
    """A ROUTER on an ipc:// socket, in a thread, answering like porchd (or never answering)."""

    def __init__(self, path: Path, answer: bool = True) -> None:
        self.path = path
        self.address = f"ipc://{path}"
        self.answer = answer
        self.exits_on_stop = True
        self.requests: list[dict[str, Any]] = []
        self.log_path = path.parent / "sink.log"
        self._ready = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> FakeDaemon:
        self._thread.start()
        assert self._ready.wait(READY_TIMEOUT_S), "fake porchd did not bind"
        return self

    def close(self) -> None:
        self._done.set()
        self._thread.join(READY_TIMEOUT_S)

    def _serve(self) -> None:
        router: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(self.address)
        self._ready.set()
        try:
            while not self._done.is_set():
                if router.poll(POLL_MS) and not self._handle(router):
                    return
        finally:
            router.close()  # leaves the socket file behind, as a killed porchd would

    def _handle(self, router: zmq.Socket[bytes]) -> bool:
        """Answer one request; False once told to stop the whole daemon."""
        *envelope, data = router.recv_multipart()
        request = json.loads(data)
        self.requests.append(request)
        if not self.answer:
            return True
        if request["command"] == "status":  # a late reply to some earlier request comes first
            router.send_multipart([*envelope, json.dumps({"id": "old", "ok": True}).encode()])
        reply = {"id": request["id"], **self.reply(request["command"], request["args"])}
        router.send_multipart([*envelope, json.dumps(reply).encode()])
        stop_all = request["command"] == "stop" and not request["args"]["names"]
        return not (stop_all and self.exits_on_stop)

    def reply(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        names = args.get("names", [])
        if "nope" in names or args.get("name") == "nope":
            return error("unknown_pipeline", "no pipeline 'nope'")
        results: dict[str, Any] = {
            "ping": {"pid": os.getpid(), "version": "0.2.0"},
            "status": STATUS,
            "stop": {"stopping": names},
            "start": {"started": names},
            "restart": {"restarting": names},
            "reload": {"added": ["new"], "removed": [], "changed": ["a", "b"], "unchanged": ["c"]},
            "graph": {
                "nodes": [
                    {"name": "gen", "state": "running", "targets": ["sink"], "host": "local"},
                    {"name": "sink", "state": "failed", "targets": [], "host": "local"},
                ]
            },
            "logs": {"path": str(self.log_path)},
            "scale": {
                "pipeline": args.get("name"),
                "replicas": args.get("replicas"),
                "started": ["hash#abc123-2"],
                "stopping": [],
            },
        }
        if command not in results:
            return error("unknown_command", f"unknown command {command!r}")
        return {"ok": True, "result": results[command]}


def error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(tmp_path / "porchd.sock").start()
    yield fake
    fake.close()


@pytest.fixture
def silent_daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(tmp_path / "porchd.sock", answer=False).start()
    yield fake
    fake.close()


def client_of(path: Path, timeout_s: float = 5.0) -> Client:
    return Client(f"ipc://{path}", path, timeout_s)


def run(path: Path, *args: str, timeout_s: str = "5") -> Result:
    return CliRunner().invoke(
        porchctl.porchctl, ["--control", str(path), "--timeout", timeout_s, *args]
    )


# --- Client ---


def test_client_returns_the_result(daemon: FakeDaemon) -> None:
    assert client_of(daemon.path).call("ping") == {"pid": os.getpid(), "version": "0.2.0"}
    assert daemon.requests[0]["command"] == "ping"
    assert daemon.requests[0]["args"] == {}


def test_client_sends_args_and_skips_replies_to_other_requests(daemon: FakeDaemon) -> None:
    client = client_of(daemon.path)
    assert client.call("stop", names=["a", "b"]) == {"stopping": ["a", "b"]}
    assert client.call("status") == STATUS
    assert daemon.requests[0]["args"] == {"names": ["a", "b"]}
    assert len({request["id"] for request in daemon.requests}) == 2


def test_client_raises_command_failed_with_the_code(daemon: FakeDaemon) -> None:
    with pytest.raises(CommandFailed) as failed:
        client_of(daemon.path).call("start", names=["nope"])
    assert (failed.value.code, failed.value.message) == ("unknown_pipeline", "no pipeline 'nope'")


def test_client_without_a_socket_file_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable) as unreachable:
        client_of(tmp_path / "porchd.sock").call("ping")
    assert unreachable.value.why == "no such socket"


def test_client_times_out_when_nobody_answers(silent_daemon: FakeDaemon) -> None:
    with pytest.raises(DaemonUnreachable) as unreachable:
        client_of(silent_daemon.path, timeout_s=0.5).call("ping")
    assert unreachable.value.why == "no answer within 0.5s"
    assert silent_daemon.requests[0]["command"] == "ping"


def test_client_tells_a_stale_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "porchd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # the file stays after close: what a killed porchd leaves
    with pytest.raises(DaemonUnreachable) as unreachable:
        client_of(path).call("ping")
    assert unreachable.value.why == "nothing listening: stale socket"


# --- the porchctl command ---


def test_unreachable_is_one_line_on_stderr_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "porchd.sock"
    result = run(path, "status")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"porchctl: cannot reach porchd at {path} (no such socket); {HINT}\n"


def test_unreachable_after_the_timeout(silent_daemon: FakeDaemon) -> None:
    result = run(silent_daemon.path, "status", timeout_s="0.5")
    assert result.exit_code == 1
    assert result.stderr == (
        f"porchctl: cannot reach porchd at {silent_daemon.path} (no answer within 0.5s); {HINT}\n"
    )


def test_control_comes_from_the_environment(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORCH_CONTROL", f"ipc://{daemon.path}")
    result = CliRunner().invoke(porchctl.porchctl, ["restart", "a"])
    assert (result.exit_code, result.stdout) == (0, "restarting: a\n")


def test_default_control_is_in_the_runtime_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PORCH_CONTROL", raising=False)
    monkeypatch.setenv("PORCH_RUNTIME_DIR", str(tmp_path))
    result = CliRunner().invoke(porchctl.porchctl, ["status"])
    assert result.exit_code == 1
    assert f"at {tmp_path / 'porchd.sock'} (no such socket)" in result.stderr


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        porchctl.porchctl, ["--debug", "--control", str(tmp_path / "x"), "status"]
    )
    assert isinstance(result.exception, DaemonUnreachable)


def test_command_failed_is_its_message_and_exit_1(daemon: FakeDaemon) -> None:
    result = run(daemon.path, "start", "a", "nope")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "porchctl: no pipeline 'nope'\n"


def test_status_prints_the_table(daemon: FakeDaemon) -> None:
    result = run(daemon.path, "status")
    assert result.exit_code == 0, result.output
    assert result.stdout == format_status(STATUS) + "\n"


def test_status_json_prints_the_result(daemon: FakeDaemon) -> None:
    result = run(daemon.path, "status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == STATUS


@pytest.mark.parametrize(
    ("command", "printed"),
    [
        ("stop", "stopping: a, b\n"),
        ("start", "starting: a, b\n"),
        ("restart", "restarting: a, b\n"),
    ],
)
def test_commands_on_named_pipelines(daemon: FakeDaemon, command: str, printed: str) -> None:
    result = run(daemon.path, command, "a", "b")
    assert (result.exit_code, result.stdout) == (0, printed)
    assert daemon.requests[-1] == {
        "id": daemon.requests[-1]["id"], "command": command, "args": {"names": ["a", "b"]},
    }  # fmt: skip


def test_scale_sends_the_count_and_says_what_started_and_stops(daemon: FakeDaemon) -> None:
    result = run(daemon.path, "scale", "hash", "3")
    assert result.exit_code == 0, result.output
    assert daemon.requests[-1]["args"] == {"name": "hash", "replicas": 3}
    assert result.stdout == "hash: 3 replica(s); started: hash#abc123-2; stopping: (none)\n"
    for bad in ("0", "65", "two"):
        assert run(daemon.path, "scale", "hash", bad).exit_code == 2  # refused before sending
    assert len(daemon.requests) == 1
    refused = run(daemon.path, "scale", "nope", "2")
    assert refused.exit_code == 1 and "no pipeline 'nope'" in refused.stderr


def test_reload_says_scaled_only_when_a_count_changed() -> None:
    from porch.porchctl_format import format_reload

    diff = {"added": [], "removed": [], "changed": [], "scaled": ["hash"], "unchanged": ["a"]}
    assert format_reload(diff).splitlines()[3] == "scaled: hash"
    assert "scaled" not in format_reload({**diff, "scaled": []})


def test_start_needs_names(daemon: FakeDaemon) -> None:
    assert run(daemon.path, "start").exit_code == 2
    assert daemon.requests == []


def test_stop_without_names_stops_the_daemon_and_waits(daemon: FakeDaemon) -> None:
    result = run(daemon.path, "stop")
    assert (result.exit_code, result.stdout) == (0, "porchd stopped\n"), result.output
    assert daemon.requests[-1]["args"] == {"names": []}


def test_stop_gives_up_when_the_daemon_keeps_running(daemon: FakeDaemon) -> None:
    daemon.exits_on_stop = False
    result = run(daemon.path, "stop", "--wait-timeout", "0.3")
    assert result.exit_code == 1
    assert result.stderr == f"porchctl: porchd at {daemon.path} is still running after 0.3s\n"


def test_reload_prints_each_kind_of_change(daemon: FakeDaemon) -> None:
    result = run(daemon.path, "reload")
    assert result.stdout == "added: new\nremoved: (none)\nchanged: a, b\nunchanged: c\n"


@pytest.mark.parametrize("fmt", ["mermaid", "dot", "json"])
def test_graph_renders_the_nodes(daemon: FakeDaemon, fmt: str) -> None:
    result = run(daemon.path, "graph", "--format", fmt)
    assert result.exit_code == 0, result.output
    assert "gen" in result.stdout and "sink" in result.stdout
    assert result.stdout.endswith("\n") and not result.stdout.endswith("\n\n")


def test_graph_json_keeps_the_edges(daemon: FakeDaemon) -> None:
    result = run(daemon.path, "graph", "--format", "json")
    assert json.loads(result.stdout)["edges"] == [{"from": "gen", "to": "sink"}]


def test_logs_prints_the_last_lines(daemon: FakeDaemon) -> None:
    daemon.log_path.write_text("".join(f"line {i}\n" for i in range(100)), encoding="utf-8")
    result = run(daemon.path, "logs", "sink", "-n", "3")
    assert (result.exit_code, result.stdout) == (0, "line 97\nline 98\nline 99\n")
    assert daemon.requests[-1]["args"] == {"name": "sink"}


def test_logs_follow_ends_quietly_on_ctrl_c(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    def follow(path: Path, backlog: int) -> Iterator[str]:
        assert (path, backlog) == (daemon.log_path, 50)
        yield "old"
        yield "new"
        raise KeyboardInterrupt

    monkeypatch.setattr(logfiles, "follow", follow)
    result = run(daemon.path, "logs", "sink", "--follow")
    assert (result.exit_code, result.stdout) == (0, "old\nnew\n")


def test_logs_of_an_unknown_pipeline(daemon: FakeDaemon) -> None:
    result = run(daemon.path, "logs", "nope")
    assert (result.exit_code, result.stderr) == (1, "porchctl: no pipeline 'nope'\n")


def test_a_control_that_is_not_ipc_is_a_usage_error() -> None:
    result = CliRunner().invoke(porchctl.porchctl, ["--control", "tcp://host:5555", "status"])
    assert result.exit_code == 2
    assert result.stderr == (
        "porchctl: control: expected a socket path or an ipc:// address, got 'tcp://host:5555'\n"
    )


def test_a_past_error_is_shown_with_its_age_and_a_current_one_as_is() -> None:
    past = {"name": "p", "state": "running", "last_error": "boom", "last_error_age_s": 185,
            "error_current": False}  # fmt: skip
    current = {**past, "state": "failed", "error_current": True}
    assert table({"pipelines": [past]})[1].endswith("  3m05s ago: boom")
    assert table({"pipelines": [current]})[1].endswith("  boom")
    assert not table({"pipelines": [current]})[1].endswith("ago: boom")


def test_status_says_which_target_is_unreachable_since_when_and_what_is_held() -> None:
    from porch.porchctl import format_targets

    since = 1_000_000.0
    result = {"pipelines": [{"name": "src", "state": "running", "targets": [
        {"name": "sink", "state": "unreachable", "since": since, "held": 1234},
        {"name": "other", "state": "connected", "since": None, "held": 0}]}]}  # fmt: skip
    assert "running, target unreachable" in format_status(result)
    lines = format_targets(result, now=since + 75).splitlines()
    assert len(lines) == 1 and lines[0].startswith("src -> sink: unreachable since ")
    assert lines[0].endswith("(1m15s), 1,234 messages held")


def test_discovery_line_names_the_local_secret_and_silent_peers() -> None:
    found = {"signed": True, "key_ids": ["ab12cd34"], "key_source": "local", "beacons_sent": 3,
             "beacons_received": 1, "beacons_rejected": 2, "rejected": {"unsigned": 2},
             "peers_silent": ["10.0.0.9:5557"]}  # fmt: skip
    line = porchctl.format_discovery({"daemon": {"discovery": found}})
    assert "signed, key ab12cd34 (local secret)" in line and "2 unsigned" in line
    assert line.endswith("SILENT static peers: 10.0.0.9:5557")
