"""Beacons (codec, fuzzed) and the discovery table (merge, expiry, conflicts), no sockets."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porch.discovery import (
    HEADER_BYTES,
    MAGIC,
    MAX_BEACON_BYTES,
    MAX_ENTRIES,
    MAX_PARTS,
    Beacon,
    DiscoveryError,
    Entry,
    Table,
    TableFull,
    decode,
    encode,
    encode_parts,
    expiry_s,
)
from porch.errors import PorchError
from porch.security import BeaconVerifier, KeyRing, new_key, sign

pytestmark = pytest.mark.timeout(60)


def beacon(daemon: str = "d1", *entries: Entry, seq: int = 1, **kw: object) -> Beacon:
    fields: dict[str, object] = {
        "daemon_id": daemon,
        "origin": f"origin-{daemon}",
        "host": "10.0.0.1",
        "hostname": "alpha",
        "sent_at": 1000.0 + seq,
        "nonce": "n1",
        "seq": seq,
        "entries": entries,
    }
    fields.update(kw)
    return Beacon(**fields)  # type: ignore[arg-type]


A = Entry("pipeline_a", "tcp://10.0.0.1:4000", "running", 7)
B = Entry("pipeline_b", None, "starting")


# ---- codec -------------------------------------------------------------------------------


def test_round_trip() -> None:
    original = beacon("d1", A, B)
    assert decode(encode(original)) == original


def test_encoding_is_small_and_versioned() -> None:
    data = encode(beacon("d1", A))
    assert data.startswith(MAGIC + bytes((1, 0)))
    assert len(data) < 300


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "bad magic"),
        (b"XXXX\x01\x00{}", "bad magic"),
        (MAGIC + b"\x02\x00{}", "version"),
        (MAGIC + b"\x01\x01{}", "flags"),
        (MAGIC + b"\x01\x00not json", "not JSON"),
        (MAGIC + b"\x01\x00[]", "object"),
        (MAGIC + b"\x01\x00" + b"[" * 100_000, "too large"),
    ],
)
def test_garbage_is_a_discovery_error(data: bytes, why: str) -> None:
    with pytest.raises(DiscoveryError, match=why):
        decode(data)


def _body(**changes: object) -> bytes:
    body = json.loads(encode(beacon("d1", A))[HEADER_BYTES:])
    body.update(changes)
    return MAGIC + b"\x01\x00" + json.dumps(body).encode()


@pytest.mark.parametrize(
    "changes",
    [
        {"v": 2},
        {"daemon": ""},
        {"daemon": 5},
        {"host": "x" * 300},
        {"sent_at": "now"},
        {"sent_at": True},
        {"seq": -1},
        {"seq": 1.5},
        {"entries": {}},
        {"entries": [{"name": "ab", "endpoint": None, "state": "running"}]},
        {"entries": [{"name": "abc", "endpoint": "ipc:///x", "state": "running"}]},
        {"entries": [{"name": "abc", "endpoint": None, "state": "dancing"}]},
        {"entries": [{"name": "abc", "endpoint": None, "state": "running"}] * 2},
        {"hostname": "a\nb"},
    ],
)
def test_invalid_fields_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(DiscoveryError):
        decode(_body(**changes))


def test_encode_refuses_an_oversized_datagram() -> None:
    entries = [Entry(f"pipe{i:05d}", "tcp://10.0.0.1:4000", "running") for i in range(1000)]
    with pytest.raises(DiscoveryError, match="over"):
        encode(beacon("d1", *entries))
    assert MAX_BEACON_BYTES == 60_000


# ---- issue 18: beacons of any number of pipelines, in parts ------------------------------


def _many(count: int, state: str = "running") -> list[Entry]:
    return [Entry(f"pipeline_{i:05d}", f"tcp://10.0.0.1:{10000 + i}", state, i,
                  targets=(f"pipeline_{i + 1:05d}",)) for i in range(count)]  # fmt: skip


def test_a_small_beacon_is_one_datagram_as_before() -> None:
    data = encode_parts(beacon("d1", A, B))
    assert data == [encode(beacon("d1", A, B))]
    assert b'"part' not in data[0]  # readable by a porch that knows no parts


def test_a_large_beacon_splits_into_signed_parts_that_merge() -> None:
    entries = _many(1200)
    datagrams = encode_parts(beacon("d1", *entries, seq=7))
    assert 3 <= len(datagrams) <= MAX_PARTS
    assert all(len(d) <= MAX_BEACON_BYTES for d in datagrams)
    ring = KeyRing((new_key(),))
    verifier = BeaconVerifier(ring)
    parts = [decode(verifier.verify(sign(d, ring))[0]) for d in datagrams]
    assert [(p.seq, p.part, p.parts) for p in parts] == [
        (7, i, len(parts)) for i in range(len(parts))
    ]
    assert [e for p in parts for e in p.entries] == entries
    table = Table("me", 3.0)
    for p in reversed(parts):  # in any order
        table.merge(p, 1.0)
    assert [r.name for r in table.remotes()] == [e.name for e in entries]
    assert table.merge(parts[0], 1.0) is False  # a part again: replayed


def test_a_part_does_not_withdraw_what_another_part_announces() -> None:
    entries = _many(1200)
    first = [decode(d) for d in encode_parts(beacon("d1", *entries, seq=1))]
    table = Table("me", 3.0)
    for p in first:
        table.merge(p, 1.0)
    second = [decode(d) for d in encode_parts(beacon("d1", *entries, seq=2))]
    table.merge(second[0], 1.5)  # part 0 of the next beacon: the rest is not withdrawn
    assert len(table.remotes()) == 1200
    # the next beacon lacks the last pipeline: withdrawn once all its parts came, not before
    third = [decode(d) for d in encode_parts(beacon("d1", *entries[:-1], seq=3))]
    for p in third[:-1]:
        table.merge(p, 2.0)
    assert entries[-1].name in {r.name for r in table.remotes()}
    table.merge(third[-1], 2.0)
    assert entries[-1].name not in {r.name for r in table.remotes()}
    assert len(table.remotes()) == 1199


def test_an_entry_no_part_names_any_more_expires_alone() -> None:
    """A part lost every time never completes a set: its entries expire on their own, while
    the supervisor (whose other parts keep coming) stays."""
    entries = _many(1200)
    table = Table("me", 3.0)
    for seq in (1, 2, 3):
        parts = [decode(d) for d in encode_parts(beacon("d1", *entries, seq=seq))]
        for p in parts if seq == 1 else parts[:-1]:  # the last part is lost after the first
            table.merge(p, float(seq))
    lost = {e.name for e in parts[-1].entries}
    assert table.expire_entries(4.0) == []
    assert set(table.expire_entries(4.5)) == lost  # last named at 1.0, expiry 3 s
    assert table.expire(4.5) == [] and len(table.remotes()) == 1200 - len(lost)


def test_a_beacon_over_max_parts_is_refused_and_parts_are_checked() -> None:
    with pytest.raises(DiscoveryError, match="parts"):
        encode_parts(beacon("d1", *_many(MAX_PARTS * MAX_ENTRIES + 1)))
    for changes in ({"parts": MAX_PARTS + 1}, {"part": 2, "parts": 2}, {"part": -1, "parts": 2},
                    {"parts": 0}, {"parts": True}, {"part": "0", "parts": 2}):  # fmt: skip
        with pytest.raises(DiscoveryError, match="part"):
            decode(_body(**changes))


def test_a_split_beacon_is_cheap_at_1000_pipelines() -> None:
    """Reported: encode + decode + merge of a 1,000-pipeline beacon."""
    entries = _many(1000)
    table = Table("me", 3.0)
    rounds = 20
    started = time.perf_counter()
    for seq in range(1, rounds + 1):
        for d in encode_parts(beacon("d1", *entries, seq=seq)):
            table.merge(decode(d), float(seq))
    per_beacon_s = (time.perf_counter() - started) / rounds
    print(
        f"\nbeacon of 1,000 pipelines: {len(encode_parts(beacon('d1', *entries)))} parts, "
        f"{per_beacon_s * 1000:.1f} ms to encode, decode and merge"
    )
    assert len(table.remotes()) == 1000


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, MAGIC + b"\x01\x00" + data):
        with contextlib.suppress(DiscoveryError):
            decode(candidate)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=30,
)
entry_like = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.just("pipeline_a"), st.text(max_size=10), json_values),
        "endpoint": st.one_of(st.just("tcp://1.2.3.4:5"), json_values),
        "state": st.one_of(st.just("running"), json_values),
        "instance": json_values,
    },
)
beacon_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), json_values),
        "daemon": st.one_of(st.just("d"), json_values),
        "origin": st.one_of(st.just("o"), json_values),
        "host": st.one_of(st.just("h"), json_values),
        "hostname": st.one_of(st.just(""), json_values),
        "sent_at": st.one_of(st.floats(), json_values),
        "nonce": st.one_of(st.just("n"), json_values),
        "seq": st.one_of(st.integers(), json_values),
        "entries": st.one_of(st.lists(entry_like, max_size=4), json_values),
    },
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(beacon_like, json_values))
def test_fuzz_arbitrary_json(body: object) -> None:
    data = MAGIC + b"\x01\x00" + json.dumps(body).encode()
    try:
        result = decode(data)
    except DiscoveryError as exc:
        assert isinstance(exc, PorchError)
    else:
        assert isinstance(result, Beacon)


def test_beacon_cost_at_100_pipelines() -> None:
    """Micro-benchmark (reported, not asserted): encode + decode per second at 100 entries."""
    entries = [Entry(f"pipeline_{i:03d}", f"tcp://10.0.0.1:{40000 + i}", "running", i)
               for i in range(100)]  # fmt: skip
    sample = beacon("d1", *entries)
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        decode(encode(sample))
    per_s = rounds / (time.perf_counter() - started)
    size = len(encode(sample))
    # One beacon per second out, one in per peer: at 1 s interval the CPU share per peer is
    # 1/per_s of one core.
    print(f"\nbeacon at 100 pipelines: {size} bytes, {per_s:,.0f} encode+decode/s, "
          f"{100 / per_s:.3f}% of a core per peer at 1 beacon/s")  # fmt: skip
    assert size < MAX_BEACON_BYTES


# ---- table -------------------------------------------------------------------------------


def table() -> Table:
    return Table(daemon_id="me", expiry_s=3.0)


def test_own_beacons_are_ignored() -> None:
    t = table()
    assert not t.merge(beacon("me", A), now=0.0)
    assert t.remotes() == []


def test_merge_resolves_remote_entries() -> None:
    t = table()
    assert t.merge(beacon("d1", A), now=0.0)
    remote = t.resolve([])["pipeline_a"]
    assert (remote.endpoint, remote.host, remote.state) == (A.endpoint, "10.0.0.1", "running")


def test_unchanged_beacon_is_not_a_change_and_late_ones_are_dropped() -> None:
    t = table()
    t.merge(beacon("d1", A, seq=1), now=0.0)
    assert not t.merge(beacon("d1", A, seq=2), now=1.0)
    assert t.peers["d1"].last_seen == 1.0
    assert not t.merge(beacon("d1", B, seq=2), now=1.5)  # replayed sequence number
    assert t.merge(beacon("d1", replace(A, endpoint="tcp://10.0.0.1:5000"), seq=3), now=2.0)


def test_silent_daemon_expires_after_the_timeout() -> None:
    t = table()
    t.merge(beacon("d1", A), now=0.0)
    assert t.expire(now=2.9) == []
    assert [b.daemon_id for b in t.expire(now=3.1)] == ["d1"]
    assert t.resolve([]) == {}


def test_expiry_is_three_intervals_at_least_three_seconds() -> None:
    assert expiry_s(0.1) == 3.0
    assert expiry_s(2.0) == 6.0


def test_entry_no_longer_announced_is_withdrawn_at_once() -> None:
    t = table()
    t.merge(beacon("d1", A, B, seq=1), now=0.0)
    assert t.merge(beacon("d1", B, seq=2), now=1.0)
    assert "pipeline_a" not in t.resolve([])


def test_restarted_daemon_replaces_its_previous_self() -> None:
    t = table()
    t.merge(beacon("old", A, origin="host-x/ctl"), now=0.0)
    moved = replace(A, endpoint="tcp://10.0.0.1:4999")
    t.merge(beacon("new", moved, origin="host-x/ctl", seq=1, sent_at=2000.0), now=1.0)
    assert t.conflicts({}) == []
    assert t.resolve([])["pipeline_a"].endpoint == "tcp://10.0.0.1:4999"


def test_two_remotes_with_one_name_conflict_and_neither_is_used() -> None:
    t = table()
    t.merge(beacon("d1", A), now=0.0)
    t.merge(beacon("d2", A, host="10.0.0.2", hostname="beta"), now=0.0)
    (conflict,) = t.conflicts({})
    assert conflict.name == "pipeline_a" and not conflict.local
    assert any("10.0.0.1" in h for h in conflict.hosts)
    assert any("10.0.0.2" in h for h in conflict.hosts)
    assert "pipeline_a" not in t.resolve([])


def test_local_pipeline_wins_locally_but_is_reported() -> None:
    t = table()
    t.merge(beacon("d1", A), now=0.0)
    (conflict,) = t.conflicts({"pipeline_a": "running"}, here="127.0.0.1 (me)")
    assert conflict.local and conflict.hosts[0] == "127.0.0.1 (me)"
    assert "pipeline_a" not in t.resolve(["pipeline_a"])


def test_ended_pipelines_do_not_conflict() -> None:
    t = table()
    t.merge(beacon("d1", replace(A, state="stopped")), now=0.0)
    t.merge(beacon("d2", A, host="10.0.0.2"), now=0.0)
    assert t.conflicts({"pipeline_a": "finished"}) == []
    assert t.resolve([])["pipeline_a"].host == "10.0.0.2"


def test_all_ended_gives_the_latest() -> None:
    t = table()
    t.merge(beacon("d1", replace(A, state="finished")), now=0.0)
    t.merge(beacon("d2", replace(A, state="stopped"), host="10.0.0.2"), now=1.0)
    assert t.resolve([])["pipeline_a"].state == "stopped"


# ---- issue 20: key per entry, several endpoints, the source address ----------------------


def test_entry_key_and_endpoints_round_trip() -> None:
    entry = Entry("pipeline_m", "tcp://10.0.0.1:4000", "running", 3, key="0a0b0c0d",
                  endpoints=("tcp://10.0.0.1:4000", "tcp://10.9.0.1:4000"))  # fmt: skip
    assert decode(encode(beacon("d1", entry))).entries == (entry,)


def test_bad_endpoints_are_refused() -> None:
    body = json.loads(encode(beacon("d1", A))[HEADER_BYTES:])
    body["entries"][0]["endpoints"] = ["udp://x:1", "tcp://y:2"]
    data = MAGIC + bytes((1, 0)) + json.dumps(body).encode()
    with pytest.raises(DiscoveryError, match="endpoints"):
        decode(data)


def test_each_peer_gets_the_endpoint_on_the_network_the_beacon_came_from() -> None:
    two = Entry("pipeline_m", "tcp://10.0.0.1:4000", "running", 3,
                endpoints=("tcp://10.0.0.1:4000", "tcp://10.9.0.1:4001"))  # fmt: skip
    t = Table(daemon_id="me", expiry_s=3.0)
    t.merge(beacon("d1", two, source="10.9.0.1"), now=0.0)
    assert t.resolve([])["pipeline_m"].endpoint == "tcp://10.9.0.1:4001"
    assert t.resolve([])["pipeline_m"].host == "10.9.0.1"  # the address that reaches it
    # the same beacon arriving over the other network later does not make it flap
    t.merge(beacon("d1", two, seq=2, source="10.0.0.1"), now=1.0)
    assert t.resolve([])["pipeline_m"].endpoint == "tcp://10.9.0.1:4001"
    t.merge(beacon("d2", replace(two, name="pipeline_z"), source="10.5.5.5"), now=1.0)
    assert t.resolve([])["pipeline_z"].endpoint == "tcp://10.0.0.1:4000"  # unknown: the first


def test_an_entry_key_beats_the_signing_key() -> None:
    t = Table(daemon_id="me", expiry_s=3.0)
    t.merge(beacon("d1", replace(A, key="feedf00d"), B, key_id="0badc0de"), now=0.0)
    resolved = t.resolve([])
    assert resolved["pipeline_a"].key_id == "feedf00d"
    assert resolved["pipeline_b"].key_id == "0badc0de"


def test_two_daemons_with_one_host_name_and_socket_but_two_origins_both_stay() -> None:
    t = Table(daemon_id="me", expiry_s=3.0)
    t.merge(beacon("d1", A, origin="id-one"), now=0.0)
    t.merge(beacon("d2", B, origin="id-two"), now=0.1)
    t.merge(beacon("d1", A, seq=2, origin="id-one"), now=1.0)
    assert set(t.resolve([])) == {"pipeline_a", "pipeline_b"}


def test_daemon_id_is_made_once_and_kept(tmp_path: Path) -> None:
    from porch.broker import daemon_origin

    first = daemon_origin(tmp_path / "state")
    assert len(first) == 32 and daemon_origin(tmp_path / "state") == first
    assert daemon_origin(tmp_path / "other") != first
    (tmp_path / "state" / "daemon-id").write_text("garbage\n")
    assert daemon_origin(tmp_path / "state") not in (first, "garbage")


def test_the_table_is_bounded_and_frees_room_as_peers_expire() -> None:
    """Unsigned beacons (--insecure) may come from anyone: what they can make us hold is
    bounded, per supervisor (MAX_ENTRIES a beacon) and in total."""
    table = Table("me", 3.0, max_peers=3, max_pipelines=5)
    two = (Entry("p_a", "tcp://h:1", "running"), Entry("p_b", "tcp://h:2", "running"))
    assert table.merge(beacon("d1", *two), 1.0) and table.merge(beacon("d2", *two), 1.0)
    with pytest.raises(TableFull, match="pipelines"):
        table.merge(beacon("d3", *two), 1.0)  # 6 > 5 pipelines
    assert table.merge(beacon("d3", two[0]), 1.0)  # exactly 5
    with pytest.raises(TableFull, match="3 supervisors"):
        table.merge(beacon("d4"), 1.0)
    assert table.merge(beacon("d1", two[0], seq=2), 2.0)  # a known peer may shrink ...
    assert table.merge(beacon("d1", *two, seq=3), 2.0)  # ... and grow back within the bound
    assert len(table.remotes()) == 5
    assert len(table.expire(10.0)) == 3 and table.peers == {}
    assert table.merge(beacon("d4"), 10.0)  # room again


# ---- issue 11.12: targets and the end for good travel, so a target knows its sources -------


def test_entry_targets_and_final_round_trip_and_reach_the_table() -> None:
    entry = Entry("pipeline_s", None, "finished", 5, targets=("pipeline_t", "pipeline_u"),
                  final=True)  # fmt: skip
    assert decode(encode(beacon("d1", entry))).entries == (entry,)
    t = Table(daemon_id="me", expiry_s=3.0)
    t.merge(beacon("d1", entry), now=0.0)
    remote = t.resolve([])["pipeline_s"]
    assert (remote.targets, remote.final) == (("pipeline_t", "pipeline_u"), True)


@pytest.mark.parametrize(
    "field, value",
    [("targets", "pipeline_t"), ("targets", ["bad name"]), ("targets", [3]), ("final", "yes")],
)
def test_bad_targets_or_final_are_refused(field: str, value: object) -> None:
    body = json.loads(encode(beacon("d1", A))[HEADER_BYTES:])
    body["entries"][0][field] = value
    data = MAGIC + bytes((1, 0)) + json.dumps(body).encode()
    with pytest.raises(DiscoveryError, match=field):
        decode(data)


# ---- issue 13: replicas of one pipeline on several hosts ---------------------------------


def replicas(tag: str, *indexes: int, **kw: object) -> list[Entry]:
    """Entries of replicas NAME#TAG-K of pipeline_a, as their supervisor announces them."""
    return [replace(A, name=f"pipeline_a#{tag}-{k}", endpoint=f"tcp://10.0.0.1:{4000 + k}",
                    **kw) for k in indexes]  # type: ignore[arg-type]  # fmt: skip


def test_replicas_on_several_hosts_are_all_resolved_and_no_conflict() -> None:
    t = table()
    t.merge(beacon("d1", *replicas("aaaaaa", 0, 1, ordered=True, partition_by="key")), now=0.0)
    t.merge(beacon("d2", *replicas("bbbbbb", 0, 1), host="10.0.0.2"), now=0.0)

    assert t.conflicts({"pipeline_a#cccccc-0": "running"}) == []
    got = t.resolve(["pipeline_a#cccccc-0", "pipeline_a#cccccc-1"])
    assert sorted(got) == ["pipeline_a#aaaaaa-0", "pipeline_a#aaaaaa-1", "pipeline_a#bbbbbb-0",
                           "pipeline_a#bbbbbb-1"]  # fmt: skip
    first = got["pipeline_a#aaaaaa-0"]
    assert (first.ordered, first.partition_by, first.host) == (True, "key", "10.0.0.1")
    assert (got["pipeline_a#bbbbbb-1"].ordered, got["pipeline_a#bbbbbb-1"].host) == (
        False, "10.0.0.2")  # fmt: skip


def test_one_process_on_one_host_and_replicas_on_another_conflict() -> None:
    t = table()
    t.merge(beacon("d1", A), now=0.0)  # plain pipeline_a
    t.merge(beacon("d2", *replicas("bbbbbb", 0, 1), host="10.0.0.2", hostname="beta"), now=0.0)

    (conflict,) = t.conflicts({})
    assert conflict.name == "pipeline_a" and not conflict.local
    assert [h.split()[:2] for h in conflict.hosts] == [["alpha", "10.0.0.1"], ["beta", "10.0.0.2"]]
    assert len(conflict.replicas_on) == 1 and "10.0.0.2" in conflict.replicas_on[0]
    assert t.resolve([]) == {}  # neither kind is handed to workers


def test_local_kind_wins_locally_against_the_other_kind_but_is_reported() -> None:
    t = table()
    t.merge(beacon("d1", A), now=0.0)
    t.merge(beacon("d2", *replicas("bbbbbb", 0), host="10.0.0.2"), now=0.0)

    here_plain = t.conflicts({"pipeline_a": "running"}, here="me")
    assert [(c.name, c.hosts[0], c.local) for c in here_plain] == [("pipeline_a", "me", True)]
    assert t.resolve(["pipeline_a"]) == {}  # a local NAME hides the remote replicas too
    here_replicas = t.conflicts({"pipeline_a#cccccc-0": "running"}, here="me")
    assert here_replicas[0].replicas_on[0] == "me" and here_replicas[0].local
    # local replicas hide the remote plain one (ours is the kind used here); the remote
    # replicas join the local ones
    assert list(t.resolve(["pipeline_a#cccccc-0"])) == ["pipeline_a#bbbbbb-0"]


def test_an_ended_kind_gives_way_to_the_live_one() -> None:
    t = table()
    t.merge(beacon("d1", replace(A, state="finished")), now=0.0)
    t.merge(beacon("d2", *replicas("bbbbbb", 0), host="10.0.0.2"), now=1.0)
    assert t.conflicts({}) == [] and list(t.resolve([])) == ["pipeline_a#bbbbbb-0"]
    assert t.conflicts({"pipeline_a": "finished"}) == []

    t.merge(beacon("d2", *replicas("bbbbbb", 0, state="stopped"), host="10.0.0.2", seq=2),
            now=2.0)  # fmt: skip
    assert list(t.resolve([])) == ["pipeline_a#bbbbbb-0"]  # all ended: the latest kind
    t.merge(beacon("d1", A, seq=2), now=3.0)
    assert list(t.resolve([])) == ["pipeline_a"]


def test_one_replica_name_on_two_hosts_is_a_conflict() -> None:
    t = table()
    t.merge(beacon("d1", *replicas("aaaaaa", 0, 1)), now=0.0)
    t.merge(beacon("d2", *replicas("aaaaaa", 1), host="10.0.0.2"), now=0.0)
    (conflict,) = t.conflicts({})
    assert conflict.name == "pipeline_a" and len(conflict.hosts) == 2
    assert list(t.resolve([])) == ["pipeline_a#aaaaaa-0"]


def test_replica_entries_round_trip_in_beacons() -> None:
    sent = beacon("d1", *replicas("aaaaaa", 0, ordered=True, partition_by="user"))
    (entry,) = decode(encode(sent)).entries
    assert (entry.name, entry.ordered, entry.partition_by) == ("pipeline_a#aaaaaa-0", True, "user")


def test_the_config_check_counts_each_replica_in_the_beacon() -> None:
    from porch.config import PipelineConfig, check_graph

    def config(name: str, replicas: int) -> PipelineConfig:
        return PipelineConfig(name=name, scripts=(), path=Path(f"/c/{name}.json"),
                              replicas=replicas, replicated=True, partition_by="user")  # fmt: skip

    def beacon_problems(count: int) -> list[object]:
        return [p for p in check_graph([config(f"stage_{i}", 64) for i in range(count)])
                if p.field == "name"]  # fmt: skip

    assert beacon_problems(60) == []  # 3,840 entries
    (problem,) = beacon_problems(65)  # 4,160
    assert str(problem).startswith("/c/stage_64.json: name: warning: 4160 pipelines (each "
                                   "replica counts) under one supervisor"), problem  # fmt: skip


@pytest.mark.parametrize("field", ["u" * 256, "user\x00"])
def test_a_partition_field_beacons_cannot_carry_is_refused(tmp_path: Path, field: str) -> None:
    from porch.config import check_config

    (tmp_path / "s.py").write_text("def step(x):\n    return x\n")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "stage", "scripts": ["s.py"], "replicas": 2,
                                "partition_by": field}))  # fmt: skip
    config, problems = check_config(path)
    assert config is None
    (problem,) = problems
    assert problem.field == "partition_by" and "at most 255 printable" in problem.message
