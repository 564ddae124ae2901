"""Network preferences: flags beat environment beat file beat defaults; checks; the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from porch.prefs import Prefs, PrefsError, parse_peer, prefs_path, read_file, resolve, write_file

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "prefs.toml"


def test_defaults_are_loopback_only(path: Path) -> None:
    effective = resolve({}, env={}, path=path)
    assert effective.prefs == Prefs()
    assert effective.prefs.interfaces == () and effective.prefs.discovery_port == 5557
    assert set(effective.sources.values()) == {"default"}


def test_flags_beat_env_beat_file_beat_defaults(path: Path) -> None:
    path.write_text('discovery_port = 6001\nbeacon_interval_s = 2.0\npeers = ["f:1"]\n'
                    'interfaces = ["eth9"]\n')  # fmt: skip
    env = {"PORCH_DISCOVERY_PORT": "6002", "PORCH_PEERS": "e:1, e:2"}
    flags = {"discovery_port": 6003, "interfaces": (), "peers": None}
    effective = resolve(flags, env=env, path=path)
    prefs, sources = effective.prefs, effective.sources
    assert prefs.discovery_port == 6003 and sources["discovery_port"] == "flag --discovery-port"
    assert prefs.peers == ("e:1", "e:2") and sources["peers"] == "env PORCH_PEERS"
    assert prefs.beacon_interval_s == 2.0 and sources["beacon_interval_s"] == f"file {path}"
    assert prefs.interfaces == ("eth9",)
    assert sources["key_file"] == "default"


def test_env_interface_list_and_interval(path: Path) -> None:
    env = {"PORCH_INTERFACE": "eth0,10.0.0.5", "PORCH_BEACON_INTERVAL": "0.5"}
    prefs = resolve({}, env=env, path=path).prefs
    assert prefs.interfaces == ("eth0", "10.0.0.5") and prefs.beacon_interval_s == 0.5


@pytest.mark.parametrize(
    "text, message",
    [
        ("discovery_port = 0\n", "discovery_port: must be a port"),
        ('discovery_port = "x"\n', "discovery_port: must be a port"),
        ("beacon_interval_s = 0\n", "beacon_interval_s: must be seconds"),
        ('peers = ["nohost"]\n', "peers: peer must be host:port"),
        ("colour = 1\n", "colour: unknown key"),
        ("insecure = 1\n", "insecure: must be true or false"),
        ("discovery_port = \n", "cannot read prefs"),
    ],
)
def test_bad_file_values_name_file_and_key(path: Path, text: str, message: str) -> None:
    path.write_text(text)
    with pytest.raises(PrefsError, match=message) as info:
        resolve({}, env={}, path=path)
    assert str(path) in str(info.value)


def test_bad_env_value_names_the_variable(path: Path) -> None:
    with pytest.raises(PrefsError, match="PORCH_DISCOVERY_PORT"):
        resolve({}, env={"PORCH_DISCOVERY_PORT": "70000"}, path=path)


def test_bad_flag_names_the_flag(path: Path) -> None:
    with pytest.raises(PrefsError, match="--peer"):
        resolve({"peers": ("a:b",)}, env={}, path=path)


def test_write_then_read_keeps_other_values(path: Path) -> None:
    write_file(path, {"interfaces": ["eth0"], "discovery_port": 5600})
    write_file(path, {"peers": ["h1:5557", "[fd00::1]:5557"], "key_file": "/etc/k",
                      "beacon_interval_s": 1.5, "insecure": True})  # fmt: skip
    values = read_file(path)
    assert values == {
        "interfaces": ("eth0",),
        "discovery_port": 5600,
        "peers": ("h1:5557", "[fd00::1]:5557"),
        "key_file": "/etc/k",
        "beacon_interval_s": 1.5,
        "insecure": True,
    }


def test_write_checks_values_first(path: Path) -> None:
    with pytest.raises(PrefsError):
        write_file(path, {"discovery_port": 0})
    assert not path.exists()


def test_parse_peer() -> None:
    assert parse_peer("host:5557") == ("host", 5557)
    assert parse_peer("[fd00::1]:9") == ("fd00::1", 9)
    with pytest.raises(PrefsError):
        parse_peer(":5557")


def test_prefs_path(tmp_path: Path) -> None:
    assert prefs_path({"PORCH_PREFS": str(tmp_path / "p.toml")}) == tmp_path / "p.toml"
    import os

    if os.geteuid() == 0:
        assert prefs_path({}) == Path("/etc/porch/prefs.toml")
    else:
        expected = tmp_path / "porch" / "prefs.toml"
        assert prefs_path({"XDG_CONFIG_HOME": str(tmp_path)}) == expected


# ---- from prefs to addresses (no socket is opened) ----------------------------------------


def test_default_plan_is_loopback() -> None:
    from porch.broker import plan

    network = plan(Prefs())
    assert network.data_host == "127.0.0.1" and network.broadcasts == ("127.255.255.255",)
    assert network.loopback_only and network.port == 5557 and network.expiry_s == 3.0


def test_leaving_loopback_needs_insecure() -> None:
    from porch.broker import plan
    from porch.errors import UsageError

    with pytest.raises(UsageError, match=r"loopback only.*--insecure"):
        plan(Prefs(peers=("198.51.100.7:5557",)))
    network = plan(Prefs(peers=("198.51.100.7:5557",), insecure=True, broadcast=False))
    assert not network.loopback_only and network.broadcasts == ()
    assert network.peers == (("198.51.100.7", 5557),)


def test_unknown_interface_is_named() -> None:
    from porch.broker import plan
    from porch.errors import UsageError

    with pytest.raises(UsageError, match="no IPv4 interface named or addressed 'nope0'"):
        plan(Prefs(interfaces=("nope0",)))
