"""The cluster key: key files, rotation, signed beacons (fuzzed), CURVE key derivation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porch.discovery import Beacon, DiscoveryError, Entry, decode, encode
from porch.errors import PorchError, UsageError
from porch.security import (
    MAC_BYTES,
    BeaconRejected,
    BeaconVerifier,
    KeyRing,
    SecurityError,
    client_pair,
    format_keyring,
    local_keyring,
    new_key,
    parse_keyring,
    read_keyring,
    server_pair,
    sign,
    write_keyring,
)

pytestmark = pytest.mark.timeout(60)

NOW = 1_700_000_000.0
RING = KeyRing((new_key(),))


def beacon_bytes(seq: int = 1) -> bytes:
    entry = Entry("pipeline_a", "tcp://10.0.0.1:4000", "running", 7)
    return encode(Beacon("d1", "o", "10.0.0.1", "alpha", NOW, "n", seq, (entry,)))


# ---- key files ---------------------------------------------------------------------------


def test_key_file_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cluster.key"
    write_keyring(path, RING, replace=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keyring(path) == RING
    assert RING.current.secret.hex() not in repr(RING)  # repr never shows the secret


def test_write_refuses_to_overwrite_without_replace(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    write_keyring(path, RING, replace=False)
    with pytest.raises(UsageError, match="--force"):
        write_keyring(path, KeyRing((new_key(),)), replace=False)
    assert read_keyring(path) == RING
    write_keyring(path, other := KeyRing((new_key(),)), replace=True)
    assert read_keyring(path) == other
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.key"]  # no temp files left


def test_read_refuses_an_open_or_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    write_keyring(path, RING, replace=False)
    os.chmod(path, 0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        read_keyring(path)
    with pytest.raises(SecurityError, match="porch keygen"):
        read_keyring(tmp_path / "absent.key")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not a Porch key file"),
        ("porch-cluster-key 1\n", "no current key"),
        ("porch-cluster-key 1\nkey abc !!!\n", "not base64"),
        ("porch-cluster-key 1\nkey abc AAAA\n", "32 bytes"),
        ("porch-cluster-key 1\nkey 00000000 " + "A" * 43 + "=\n", "does not match"),
        ("porch-cluster-key 1\nsecret x\n", "expected `key ID BASE64`"),
    ],
)
def test_malformed_key_files_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(SecurityError, match=problem):
        parse_keyring(text, "k")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_key_file_text_is_a_key_ring_or_a_clear_error(text: str) -> None:
    try:
        ring = parse_keyring("porch-cluster-key 1\n" + text, "k")
    except SecurityError as exc:
        assert str(exc).startswith("k")
    else:
        assert parse_keyring(format_keyring(ring), "k") == ring


def test_rotation_add_promote_retire() -> None:
    old = RING.current
    added = RING.add()
    assert added.current == old and len(added.keys) == 2 and added.next_id == added.keys[1].id
    assert parse_keyring(format_keyring(added), "k") == added
    with pytest.raises(SecurityError, match="promote it first"):
        added.add()
    promoted = added.promote()
    assert promoted.current == added.keys[1] and promoted.get(old.id) == old
    assert promoted.next_id is None
    with pytest.raises(SecurityError, match="add one first"):
        promoted.promote()  # a second promote must not swap back to the old key
    assert promoted.retire().keys == (promoted.current,)


# ---- signed beacons ----------------------------------------------------------------------


def test_signed_beacon_round_trip() -> None:
    data = beacon_bytes()
    inner, key_id = BeaconVerifier(RING).verify(sign(data, RING, now=NOW), now=NOW + 1)
    assert inner == data and key_id == RING.current.id
    assert decode(inner).entries[0].name == "pipeline_a"


def test_signed_beacon_is_not_readable_without_a_key() -> None:
    with pytest.raises(DiscoveryError, match="flags"):
        decode(sign(beacon_bytes(), RING, now=NOW))


def reason(verifier: BeaconVerifier, data: bytes, now: float = NOW) -> str:
    with pytest.raises(BeaconRejected) as caught:
        verifier.verify(data, now=now)
    return caught.value.reason


def test_unsigned_forged_stale_and_replayed_are_rejected_with_reasons() -> None:
    verifier = BeaconVerifier(RING)
    signed = sign(beacon_bytes(), RING, now=NOW)
    assert reason(verifier, beacon_bytes()) == "unsigned"
    assert reason(verifier, sign(beacon_bytes(), KeyRing((new_key(),)), now=NOW)) == "unknown_key"
    tampered = bytearray(signed)
    tampered[-MAC_BYTES - 5] ^= 1  # a byte of the body
    assert reason(verifier, bytes(tampered)) == "bad_signature"
    assert reason(verifier, signed[:-1]) == "bad_signature"
    assert reason(verifier, signed, now=NOW + 31) == "stale"
    assert reason(verifier, signed, now=NOW - 31) == "stale"
    verifier.verify(signed, now=NOW)
    assert reason(verifier, signed, now=NOW + 1) == "replayed"


def test_rotation_window_accepts_old_and_new_keys() -> None:
    old_ring = RING
    new_ring = RING.add().promote()  # new current, old still accepted
    verifier = BeaconVerifier(new_ring)
    for ring in (old_ring, new_ring):
        verifier.verify(sign(beacon_bytes(), ring, now=NOW), now=NOW)
    assert reason(BeaconVerifier(new_ring.retire()), sign(beacon_bytes(), old_ring, now=NOW)) == (
        "unknown_key"
    )


def test_replay_cache_is_bounded() -> None:
    verifier = BeaconVerifier(RING, max_nonces=10)
    for _ in range(50):
        verifier.verify(sign(beacon_bytes(), RING, now=NOW), now=NOW)
    assert len(verifier._nonces) <= 10


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_never_pass_or_crash(data: bytes) -> None:
    with pytest.raises(PorchError):
        BeaconVerifier(RING).verify(data, now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_fuzz_any_bit_flip_of_a_signed_beacon_is_rejected(position: int, flip: int) -> None:
    signed = bytearray(sign(beacon_bytes(), RING, now=NOW))
    signed[position % len(signed)] ^= flip or 1
    with pytest.raises(BeaconRejected):
        BeaconVerifier(RING).verify(bytes(signed), now=NOW)


# ---- CURVE keys --------------------------------------------------------------------------


def test_curve_keys_are_derived_per_key_and_role() -> None:
    key = RING.current
    assert server_pair(key) == server_pair(key)
    assert server_pair(key).public != client_pair(key).public
    assert server_pair(key).public != server_pair(new_key()).public
    assert len(server_pair(key).public) == 40  # Z85 of 32 bytes


# ---- the local secret ----------------------------------------------------------------------


def test_local_secret_is_made_once_0600_in_a_0700_folder(tmp_path: Path) -> None:
    path, ring = local_keyring(tmp_path / "state")
    assert path == tmp_path / "state" / "keys" / "local.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert local_keyring(tmp_path / "state") == (path, ring)  # read back, not made again
    assert read_keyring(path) == ring  # what a worker reads from --key-file


def test_local_secret_refuses_an_open_folder_or_file_and_changes_neither(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(SecurityError, match=r"keys: must be a folder of this user with mode 0700"):
        local_keyring(tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    folder.chmod(0o700)
    path, _ = local_keyring(tmp_path)
    path.chmod(0o644)
    with pytest.raises(SecurityError, match=r"local\.key: the local secret must be this user's"):
        local_keyring(tmp_path)


def test_local_secret_is_never_read_through_a_symlink(tmp_path: Path) -> None:
    decoy = tmp_path / "decoy.key"
    write_keyring(decoy, KeyRing((new_key(),)), replace=False)
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "keys" / "local.key").symlink_to(decoy)
    with pytest.raises(SecurityError, match=r"local\.key: is a symlink"):
        local_keyring(tmp_path)


def test_a_state_folder_that_cannot_hold_the_local_secret_says_what_to_do() -> None:
    with pytest.raises(SecurityError, match=r"local secret: .*PORCH_STATE_DIR.*--key-file"):
        local_keyring(Path("/proc/porch-no-such-folder"))  # /proc takes no new folders
