"""porchd --http: /metrics (parsed by prometheus-client's own parser), /api/status and
/api/graph (the same data as porchctl), the token, and the exposure rules."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Porchd
from tests.integration.test_porchd import chain, ticker

pytestmark = [pytest.mark.integration]

Start = Callable[..., Porchd]
HTTP_TIMEOUT_S = 5.0
URL_LINE = re.compile(r"porchd: dashboard at (http://\S+)")


def dashboard_url(daemon: Porchd) -> str:
    """The page's address porchd printed at start (it listens on a port the OS chose)."""

    def printed() -> str | None:
        found = [URL_LINE.search(line) for line in daemon.stderr]
        return next((m.group(1) for m in found if m), None)

    url: str = daemon.wait_until(printed, 15.0, "the dashboard address")
    return url


def api_base(daemon: Porchd) -> tuple[str, dict[str, str]]:
    """The dashboard's base address and the header that carries its token."""
    base, _, token = dashboard_url(daemon).partition("/?token=")
    assert token, "porchd printed no token: the loopback dashboard must ask for one"
    return base, {"Authorization": f"Bearer {token}"}


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET `url`; (status, body) for any HTTP answer."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def metric(values: dict[Any, float], name: str, pipeline: str) -> float:
    """One pipeline's sample of `name`."""
    return values[(name, (("pipeline", pipeline),))]


@pytest.mark.timeout(90)
def test_metrics_parse_and_move_as_messages_flow(tmp_path: Path, porchd: Start) -> None:
    daemon = porchd(*chain(tmp_path), extra=("--http", "127.0.0.1:0"))
    base, auth = api_base(daemon)
    daemon.wait_running("ticker", "printer")

    def scrape() -> dict[Any, float]:
        status, body = fetch(base + "/metrics", auth)
        assert status == 200, body
        return samples(body)

    first = daemon.wait_until(
        lambda: (v := scrape()) and metric(v, "porch_messages_in_total", "printer") > 0 and v,
        20.0, "printer messages in /metrics",
    )  # fmt: skip
    later = daemon.wait_until(
        lambda: (v := scrape())
        and metric(v, "porch_messages_in_total", "printer")
        > metric(first, "porch_messages_in_total", "printer") + 5
        and v,
        20.0, "the printer's counter to grow",
    )  # fmt: skip
    assert metric(later, "porch_messages_out_total", "ticker") > metric(
        first, "porch_messages_out_total", "ticker"
    )
    assert metric(later, "porch_iterations_total", "ticker") >= 5
    assert metric(later, "porch_rss_bytes", "printer") > 0
    assert metric(later, "porch_queue_depth", "printer") >= 0
    assert metric(later, "porch_restarts_total", "printer") == 0
    for name in ("porch_dropped_total", "porch_dead_letters_total", "porch_duplicates_total",
                 "porch_bad_frames_total", "porch_handshakes_rejected_total"):  # fmt: skip
        assert metric(later, name, "printer") == 0, name
    assert later[("porch_pipeline_state", (("pipeline", "ticker"), ("state", "running")))] == 1
    assert later[("porch_pipeline_state", (("pipeline", "ticker"), ("state", "failed")))] == 0
    sampled = daemon.wait_until(  # workers time one step() in 8
        lambda: (v := scrape()) and metric(v, "porch_step_duration_seconds_count", "printer") >= 2
        and v,
        20.0, "step() durations in the histogram",
    )  # fmt: skip
    steps = metric(sampled, "porch_step_duration_seconds_count", "printer")
    inf_bucket = ("porch_step_duration_seconds_bucket", (("le", "+Inf"), ("pipeline", "printer")))
    assert sampled[inf_bucket] == steps
    assert ("porch_beacons_rejected_total", ()) in later
    assert later[("porch_beacons_sent_total", ())] > 0
    assert ("process_resident_memory_bytes", ()) in later  # porchd's own
    rate = daemon.wait_until(
        lambda: metric(scrape(), "porch_messages_out_per_second", "ticker"), 20.0, "a rate"
    )
    assert 2 < rate < 40  # the ticker sends every ~0.05 s


@pytest.mark.timeout(60)
def test_api_is_what_porchctl_prints(tmp_path: Path, porchd: Start) -> None:
    daemon = porchd(*chain(tmp_path), extra=("--http", "127.0.0.1:0"))
    base, auth = api_base(daemon)
    daemon.wait_running("ticker", "printer")

    def same_graph() -> bool:  # the served snapshot is up to 0.5 s old: wait until they agree
        graph_status, graph_body = fetch(base + "/api/graph", auth)
        assert graph_status == 200
        printed = daemon.ctl("graph", "--format", "json")
        return bool(json.loads(graph_body) == json.loads(printed.stdout))

    daemon.wait_until(same_graph, 10, "/api/graph to match porchctl graph")

    status_code, status_body = fetch(base + "/api/status", auth)
    assert status_code == 200
    api = json.loads(status_body)
    cli = daemon.status()
    assert api["daemon"]["pid"] == cli["daemon"]["pid"] == daemon.proc.pid
    assert [p["name"] for p in api["pipelines"]] == [p["name"] for p in cli["pipelines"]]
    for served, printed_entry in zip(api["pipelines"], cli["pipelines"], strict=True):
        assert set(served) == set(printed_entry)
        assert {"msgs_in_per_s", "msgs_out_per_s", "dead_letters", "duplicates"} <= set(served)

    page_status, page = fetch(base + "/")
    assert page_status == 200 and "dashboard.js" in page and "__PORCH_COLORS__" not in page
    assert fetch(base + "/dashboard.js")[0] == 200
    assert fetch(base + "/nope")[0] == 404
    # a web page elsewhere must not read the API through a name it points at 127.0.0.1
    assert fetch(base + "/api/status", {**auth, "Host": "attacker.example"})[0] == 403


@pytest.mark.timeout(60)
def test_loopback_dashboard_asks_a_generated_token_its_owner_reads_from_a_0600_file(
    tmp_path: Path, porchd: Start
) -> None:
    """Other unix users share loopback: without the token they get nothing but the page."""
    daemon = porchd(*chain(tmp_path), extra=("--http", "127.0.0.1:0"))
    base, auth = api_base(daemon)
    daemon.wait_running("ticker")
    token_file = daemon.state_dir / "http.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert auth["Authorization"] == f"Bearer {token_file.read_text().strip()}"
    for path in ("/api/status", "/api/graph", "/metrics"):
        assert fetch(base + path)[0] == 401, path
        assert fetch(base + path, auth)[0] == 200, path
    assert fetch(base + "/")[0] == 200  # the page itself carries no data
    shown = daemon.ctl("dashboard")
    assert shown.returncode == 0 and shown.stdout.strip() == dashboard_url(daemon), shown
    assert daemon.status()["daemon"]["http"]["token_file"] == str(token_file)
    assert daemon.ctl("stop").returncode == 0 and daemon.wait_exit(30.0) == 0
    assert not token_file.exists()


@pytest.mark.timeout(60)
def test_token_is_required_when_given(tmp_path: Path, porchd: Start) -> None:
    extra = ("--http", "127.0.0.1:0", "--http-token", "s3cret")
    daemon = porchd(*chain(tmp_path), extra=extra)
    url = dashboard_url(daemon)
    assert url.endswith("/?token=s3cret")
    base = url.split("/?")[0]
    daemon.wait_running("ticker")
    for path in ("/api/status", "/api/graph", "/metrics"):
        assert fetch(base + path)[0] == 401, path
        assert fetch(base + path, {"Authorization": "Bearer wrong"})[0] == 401, path
        assert fetch(base + path, {"Authorization": "Bearer s3cret"})[0] == 200, path
        assert fetch(base + path + "?token=s3cret")[0] == 200, path
    assert fetch(base + "/")[0] == 200  # the page itself carries no data


@pytest.mark.timeout(60)
def test_non_loopback_without_a_key_is_refused(tmp_path: Path, porchd: Start) -> None:
    daemon = porchd(*chain(tmp_path), extra=("--http", "0.0.0.0:0"))
    assert daemon.wait_exit(30.0) == 2
    err = "\n".join(daemon.stderr)
    assert "refusing to serve the dashboard on 0.0.0.0:0" in err, daemon.report()
    assert "cluster key" in err
    assert not daemon.control.exists()


@pytest.mark.timeout(90)
def test_a_replicated_pipeline_is_one_entry_with_its_replicas_everywhere(
    tmp_path: Path, porchd: Start
) -> None:
    """issue 13: status --json, the table, top, graph and /metrics show `tick` (2 replicas)
    once, with each replica process under it; a replica killed with SIGKILL is restarted and
    counted under its own row, and the pipeline stays running."""
    solo = ticker(tmp_path, "solo")
    tick = ticker(tmp_path, "tick", replicas=2, restart_backoff_s=0)
    daemon = porchd(solo, tick, extra=("--http", "127.0.0.1:0"))
    base, auth = api_base(daemon)

    def both_running() -> dict[str, Any] | None:
        entry = daemon.pipeline("tick")
        replicas = entry.get("replicas", [])
        ok = len(replicas) == 2 and all(r["state"] == "running" and r["pid"] for r in replicas)
        return entry if ok and entry["iterations"] > 0 else None

    entry = daemon.wait_until(both_running, 20.0, "both replicas of tick running")
    names = [r["name"] for r in entry["replicas"]]
    assert all(re.fullmatch(r"tick#[0-9a-f]{6}-[01]", n) for n in names), names
    assert entry["pid"] is None and entry["state"] == "running"
    assert entry["iterations"] == sum(r["iterations"] for r in entry["replicas"])
    assert "replicas" not in daemon.pipeline("solo")  # a plain pipeline is as before
    table = daemon.ctl("status").stdout.splitlines()
    assert [line.split()[0] for line in table[:5]] == ["PIPELINE", "solo", "tick", *names]
    assert "running (2 replicas)" in table[2]
    frame = daemon.ctl("top").stdout  # no terminal: one frame
    assert re.search(r"\n  #[0-9a-f]{6}-0 +running", frame), frame
    [node] = [n for n in json.loads(daemon.ctl("graph", "--format", "json").stdout)["nodes"]
              if n["name"] == "tick"]  # fmt: skip
    assert sorted(r["name"] for r in node["replicas"]) == sorted(names)

    def scraped() -> dict[Any, float] | None:
        status, body = fetch(base + "/metrics", auth)
        found = samples(body) if status == 200 else {}
        key = ("porch_iterations_total", (("pipeline", "tick"), ("replica", "1")))
        return found if found.get(key) else None

    values = daemon.wait_until(scraped, 20.0, "tick's replica 1 in /metrics")
    assert values[("porch_pipeline_replicas", (("pipeline", "tick"),))] == 2
    assert ("porch_iterations_total", (("pipeline", "solo"),)) in values

    victim = entry["replicas"][1]
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        found = daemon.pipeline("tick")
        again = found["replicas"][1]
        moved = again["pid"] not in (None, victim["pid"]) and again["state"] == "running"
        return found if moved and again["restarts"] == 1 else None

    after = daemon.wait_until(restarted, 20.0, "the killed replica restarted")
    assert after["state"] == "running" and after["restarts"] == 1
    assert after["replicas"][0]["pid"] == entry["replicas"][0]["pid"]  # the other one untouched
    assert after["replicas"][0]["restarts"] == 0
