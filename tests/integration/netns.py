"""A cluster of network namespaces for multi-host tests (scripts/netns-cluster), and porchd
processes that run inside them.

Traffic stays inside namespaces this fixture creates: the hosts' eth0 are veths into a bridge
that lives in its own switch namespace, on a 10.213.x.0/24 chosen from the prefix. Needs root
and iproute2: elsewhere the tests skip, but under CI=true they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import PORCHD, REPO_ROOT, RUN_MARKER, Porchd, spawn_captured

SCRIPT = REPO_ROOT / "scripts" / "netns-cluster"
COMMAND_TIMEOUT_S = 30.0


def require_netns() -> None:
    """Skip (or under CI=true fail) unless we may create network namespaces."""
    why = None
    if os.geteuid() != 0:
        why = "netns cluster tests need root (network namespaces)"
    elif shutil.which("ip") is None:
        why = "netns cluster tests need iproute2 (`ip`)"
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI=true requires them to run")
    pytest.skip(why)


@dataclass(frozen=True)
class Host:
    """One namespace of the cluster."""

    ns: str
    address: str
    interface: str


class Cluster:
    """The hosts of one `netns-cluster up`; `cut`/`restore` take a host's link down and up."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix = prefix
        out = _script("up", str(count), "--prefix", prefix)
        self.hosts = [Host(*line.split()) for line in out.splitlines() if line.strip()]

    def ip(self, host: Host, *args: str) -> None:
        """Run `ip -n NS ARGS...` for a host."""
        subprocess.run(["ip", "-n", host.ns, *args], check=True, timeout=COMMAND_TIMEOUT_S)

    def cut(self, host: Host) -> None:
        """Take the host's link down (inside its namespace)."""
        self.ip(host, "link", "set", host.interface, "down")

    def restore(self, host: Host) -> None:
        """Bring the host's link up again."""
        self.ip(host, "link", "set", host.interface, "up")

    def down(self) -> None:
        """Kill what runs inside and delete every namespace of the cluster."""
        _script("down", "--prefix", self.prefix)

    def second_network(self, a: Host, b: Host) -> tuple[Host, Host]:
        """Join `a` and `b` by a second network (a veth pair, both ends named eth1) on
        10.214.S.0/24, and take `b` off the first one: `b` reaches only `a`'s second address.
        Returns both hosts as seen on that network."""
        subnet = self.hosts[0].address.split(".")[2]
        net = f"10.214.{subnet}"
        subprocess.run(["ip", "-n", b.ns, "link", "del", b.interface], check=True,
                       timeout=COMMAND_TIMEOUT_S)  # fmt: skip
        subprocess.run(["ip", "-n", a.ns, "link", "add", "eth1", "type", "veth", "peer", "name",
                        "eth1", "netns", b.ns], check=True, timeout=COMMAND_TIMEOUT_S)  # fmt: skip
        joined = []
        for host, last in ((a, 1), (b, 2)):
            self.ip(host, "addr", "add", f"{net}.{last}/24", "broadcast", f"{net}.255",
                    "dev", "eth1")  # fmt: skip
            self.ip(host, "link", "set", "eth1", "up")
            joined.append(Host(host.ns, f"{net}.{last}", "eth1"))
        return joined[0], joined[1]


def _script(*args: str) -> str:
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, check=False)  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"netns-cluster {' '.join(args)} failed: {done.stderr}")
    return done.stdout


class NetnsPorchd(Porchd):
    """`porchd start` inside a host's namespace, on its eth0 (--insecure unless given a key)."""

    def __init__(
        self,
        host: Host,
        home: Path,
        sources: list[str],
        extra: list[str],
        control_at: Path | None = None,
    ) -> None:
        """`control_at`: the control socket path porchd is given, a folder bind-mounted (in
        the namespace's own mount namespace) onto `home`: two hosts can then use one path,
        as cloned machines do; porchctl still reaches each through `home`."""
        home.mkdir(parents=True, exist_ok=True)
        self.host, self.home = host, home
        self.control = home / "ctl.sock"
        self.state_dir = home / "state"
        self.sources = sources
        # porchd's run folder ($TMPDIR/porch-run-PID-X) holds Unix sockets (at most 107 bytes
        # a path): under pytest's numbered base folder and a namespace's name it can overflow
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pn-", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if k != "PORCH_CONTROL"}
        self.env = {**env, "PORCH_RUNTIME_DIR": str(home / "runtime"),
                    "PORCH_STATE_DIR": str(home / "state-base"), "TMPDIR": str(self.tmpdir),
                    RUN_MARKER: uuid.uuid4().hex}  # fmt: skip
        control = self.control if control_at is None else control_at / "ctl.sock"
        interface = [] if "--interface" in extra else ["--interface", host.interface]
        self.args = ["start", *sources, "--control", str(control), "--state-dir",
                     str(self.state_dir), "--stop-timeout", "5", *interface,
                     *([] if "--key-file" in extra else ["--insecure"]), *extra]  # fmt: skip
        command = ["ip", "netns", "exec", host.ns, str(PORCHD), *self.args]
        if control_at is not None:  # `ip netns exec` runs it in a mount namespace of its own
            control_at.mkdir(parents=True, exist_ok=True)
            command[4:4] = ["sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh",
                            str(home), str(control_at)]  # fmt: skip
        self.proc, self.stdout, self.stderr, self._readers = spawn_captured(command, home, self.env)

    def kill(self) -> None:
        """SIGKILL porchd and its workers, then remove its run folder's parent."""
        super().kill()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


StartIn = Callable[..., NetnsPorchd]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[[int], Cluster]]:
    """`cluster(n)`: n fresh hosts; deleted at teardown even when the test failed."""
    require_netns()
    made: list[Cluster] = []

    def make(count: int) -> Cluster:
        prefix = f"pt{uuid.uuid4().hex[:6]}"
        made.append(Cluster(prefix, count))
        return made[-1]

    yield make
    for each in made:
        each.down()


@pytest.fixture
def porchd_in(tmp_path: Path) -> Iterator[StartIn]:
    """`porchd_in(host, *configs, name=..., extra=[...])`: a porchd inside a host; killed at
    teardown."""
    started: list[NetnsPorchd] = []

    def start(
        host: Host,
        *sources: str,
        name: str = "",
        extra: tuple[str, ...] = (),
        control_at: Path | None = None,
    ) -> NetnsPorchd:
        home = tmp_path / (name or host.ns)
        daemon = NetnsPorchd(host, home, list(sources), list(extra), control_at)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
