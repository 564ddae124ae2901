"""The cluster key and what it protects: key files, signed beacons, CURVE keys for data links.

One key file is the single secret of a deployment. It holds one or more 32-byte keys, each with
a key id; the first key is the current one (it signs beacons and serves data links), the others
are still accepted (key rotation: old and new work side by side for a window). At most one of
them is marked `next`: added by rotation step 1, accepted, made current by step 2.

Beacons: `sign` wraps the bytes of `discovery.encode` (flags 0) in an envelope with flag bit 0
set: header | key id | timestamp | nonce | beacon body | HMAC-SHA256 over everything before
it. `BeaconVerifier.verify` checks the MAC with the key the id names, the timestamp window and
the nonce (replay cache), and gives back the unsigned bytes for `discovery.decode`.

Data links: every member derives (HKDF-SHA256) a CURVE server keypair and a client keypair from
each key. Workers serve with the current key's server keypair; the ZAP authenticator, started on
the worker's own ZeroMQ context before any bind, lets in only the client public keys of the
ring's keys. A peer without the key can neither complete a handshake nor read the traffic.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import stat
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

from porch.errors import PorchError, UsageError
from porch.paths import ensure_owner_only_dir, open_private_file

KEY_BYTES = 32
KEY_ID_BYTES = 4
FILE_MAGIC = "porch-cluster-key 1"
MAX_KEYS = 8
KEY_FILE_NAME = "cluster.key"

FLAG_SIGNED = 0x01
MAGIC = b"PRCH"
HEADER_BYTES = len(MAGIC) + 2
_ENVELOPE = struct.Struct(f"!{KEY_ID_BYTES}sd16s")  # key id, sent at (unix s), nonce
MAC_BYTES = 32
MIN_SIGNED_BYTES = HEADER_BYTES + _ENVELOPE.size + MAC_BYTES
WINDOW_S = 30.0  # a beacon's timestamp may be this far from our clock, either way
MAX_NONCES = 100_000  # replay cache bound: a flood of valid beacons cannot grow it further

ZAP_DOMAIN = "porch"
_SERVER_INFO = b"porch curve server v1"
_CLIENT_INFO = b"porch curve client v1"

NO_KEY_HINT = (
    "without a cluster key Porch listens and discovers on loopback only. Make a key with "
    "`porch keygen`, copy it to every host (mode 0600), and pass it with --key-file PATH (or "
    "PORCH_KEY_FILE, or `porch prefs --key-file PATH`); on a network you trust you may pass "
    "--insecure instead (unsigned beacons, unencrypted links)"
)


class SecurityError(PorchError):
    """A key file is missing, unreadable, too open or malformed; or CURVE is unavailable."""

    exit_code = 2


class BeaconRejected(PorchError):
    """A beacon failed verification; `reason` is the counter it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


REJECT_REASONS = ("unsigned", "bad_signature", "unknown_key", "stale", "replayed")


# ---- keys and key files ------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One cluster key: its id and its 32 secret bytes (never shown by repr)."""

    id: str
    secret: bytes = field(repr=False)


def key_id(secret: bytes) -> str:
    """The id of a key: derived from it, so a file cannot pair an id with the wrong key."""
    return hashlib.sha256(b"porch key id\x00" + secret).digest()[:KEY_ID_BYTES].hex()


def new_key() -> Key:
    """A fresh random key."""
    secret = secrets.token_bytes(KEY_BYTES)
    return Key(key_id(secret), secret)


@dataclass(frozen=True)
class KeyRing:
    """The keys of one key file: the first is current, the others are accepted."""

    keys: tuple[Key, ...]
    next_id: str | None = None  # a key added for rotation, not used yet

    @property
    def current(self) -> Key:
        """The key that signs beacons and serves data links."""
        return self.keys[0]

    @property
    def ids(self) -> tuple[str, ...]:
        """Every accepted key id, current first."""
        return tuple(k.id for k in self.keys)

    def get(self, wanted: str) -> Key | None:
        """The key with this id, if the ring has it."""
        return next((k for k in self.keys if k.id == wanted), None)

    def add(self) -> KeyRing:
        """Rotation step 1: a new key that is accepted but not yet used."""
        if self.next_id is not None:
            raise SecurityError(f"key {self.next_id} is already waiting; promote it first")
        if len(self.keys) >= MAX_KEYS:
            raise SecurityError(f"a key file holds at most {MAX_KEYS} keys; retire old ones")
        key = new_key()
        return KeyRing((*self.keys, key), key.id)

    def promote(self) -> KeyRing:
        """Rotation step 2: the added key becomes current; the others stay accepted."""
        following = self.get(self.next_id or "")
        if following is None:
            raise SecurityError("no key waiting to be promoted; add one first (--add)")
        return KeyRing((following, *(k for k in self.keys if k is not following)))

    def retire(self) -> KeyRing:
        """Rotation step 3: only the current key (and a waiting one) is left."""
        return KeyRing(tuple(k for k in self.keys if k.id in (self.current.id, self.next_id)),
                       self.next_id)  # fmt: skip


def format_keyring(ring: KeyRing) -> str:
    """The text of a key file."""
    lines = [
        FILE_MAGIC,
        "# Porch cluster key: the one secret of this deployment. Keep it mode 0600 and copy it",
        "# to every host. The first key is current; the others are still accepted (rotation).",
    ]
    lines += [f"{'next' if k.id == ring.next_id else 'key'} {k.id} "
              f"{base64.b64encode(k.secret).decode()}" for k in ring.keys]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_keyring(text: str, where: str) -> KeyRing:
    """Parse a key file's text; SecurityError naming the file and line when it is not one."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines or lines[0][1] != FILE_MAGIC:
        raise SecurityError(f"{where}: not a Porch key file (make one with `porch keygen`)")
    parsed = [_parse_key_line(line, f"{where}:{n}") for n, line in lines[1:]]
    keys = [k for k, waiting in parsed if not waiting] + [k for k, waiting in parsed if waiting]
    waiting = [k.id for k, is_next in parsed if is_next]
    if len(waiting) == len(keys):  # also: no key at all
        raise SecurityError(f"{where}: no current key (a `key` line) in the file")
    if len(keys) > MAX_KEYS or len({k.id for k in keys}) != len(keys) or len(waiting) > 1:
        raise SecurityError(f"{where}: at most {MAX_KEYS} keys, each once, one of them `next`")
    return KeyRing(tuple(keys), waiting[0] if waiting else None)


def _parse_key_line(line: str, where: str) -> tuple[Key, bool]:
    """One `key ID BASE64` (or `next ID BASE64`) line: the key, and whether it is `next`."""
    parts = line.split()
    if len(parts) != 3 or parts[0] not in ("key", "next"):
        raise SecurityError(f"{where}: expected `key ID BASE64`")
    try:
        secret = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError):
        raise SecurityError(f"{where}: the key is not base64") from None
    if len(secret) != KEY_BYTES:
        raise SecurityError(f"{where}: a key is {KEY_BYTES} bytes, got {len(secret)}")
    if key_id(secret) != parts[1]:
        raise SecurityError(f"{where}: key id {parts[1]!r} does not match its key (edited?)")
    return Key(parts[1], secret), parts[0] == "next"


def read_keyring(path: str | Path) -> KeyRing:
    """Read a key file; refuse one that others may read (like ssh does)."""
    path = Path(path).expanduser()
    try:
        info = path.stat()
        if info.st_mode & 0o077:
            raise SecurityError(
                f"{path}: key file is readable by others (mode {stat.S_IMODE(info.st_mode):04o});"
                f" run `chmod 600 {path}`"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecurityError(f"{path}: no such key file (make one with `porch keygen`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityError(f"{path}: cannot read key file: {exc}") from None
    return parse_keyring(text, str(path))


def write_keyring(path: str | Path, ring: KeyRing, *, replace: bool) -> None:
    """Write a key file with mode 0600; without `replace`, refuse an existing file."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(format_keyring(ring))
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic "create only if absent"
    except FileExistsError:
        raise UsageError(f"{path} already exists; pass --force to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)


# ---- the per-user local secret -------------------------------------------------------------

LOCAL_KEY_FOLDER = "keys"
LOCAL_KEY_NAME = "local.key"


def local_key_path(state_base: Path) -> Path:
    """Where this user's local secret lives: <state base>/keys/local.key."""
    return state_base / LOCAL_KEY_FOLDER / LOCAL_KEY_NAME


def local_keyring(state_base: Path) -> tuple[Path, KeyRing]:
    """This user's local secret (made once, 0600 in a 0700 folder) and its path.

    Without a cluster key it is used exactly as one: loopback is shared with every local user,
    so beacons are signed and data links are CURVE with it. Another user can neither read it
    (the folder is 0700) nor plant one for us (the folder must be ours and private, the file
    ours, 0600, not a symlink).
    """
    path = local_key_path(state_base)
    try:
        return path, _read_or_make_local_key(path)
    except OSError as exc:  # UnsafePathError (it names the path) or the system's error
        detail = str(exc) if isinstance(exc, PorchError) else f"{path}: {exc.strerror or exc}"
        raise SecurityError(
            f"cannot make or read this user's local secret: {detail}; point PORCH_STATE_DIR "
            "at a folder of yours, or pass a cluster key (--key-file)"
        ) from None


def _read_or_make_local_key(path: Path) -> KeyRing:
    ensure_owner_only_dir(path.parent)
    for _ in range(2):
        try:
            fd = open_private_file(path, os.O_RDONLY)
        except FileNotFoundError:
            _create_local_key(path)
            continue
        with os.fdopen(fd, "r", encoding="utf-8") as file:
            info = os.fstat(file.fileno())
            if info.st_uid != os.geteuid() or info.st_mode & 0o077:
                raise SecurityError(
                    f"{path}: the local secret must be this user's, mode 0600 (got uid "
                    f"{info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}); remove it and "
                    "Porch makes a new one"
                )
            return parse_keyring(file.read(), str(path))
    raise SecurityError(f"{path}: the local secret disappeared while it was being made")


def _create_local_key(path: Path) -> None:
    """Write a new secret atomically, only if none exists (two first starts race safely)."""
    ring = KeyRing((new_key(),))
    key = ring.current
    text = (
        f"{FILE_MAGIC}\n# Porch's local secret of this user (made by Porch): it authenticates "
        "loopback when no cluster key is given.\n# Keep it private. For several hosts or users, "
        "make a cluster key with `porch keygen`.\n"
        f"key {key.id} {base64.b64encode(key.secret).decode()}\n"
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use that
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def default_key_path(prefs_file: Path) -> Path:
    """Where `porch keygen` writes without a path: next to the prefs file."""
    return prefs_file.parent / KEY_FILE_NAME


# ---- signed beacons ----------------------------------------------------------------------


def sign(data: bytes, ring: KeyRing, now: float | None = None) -> bytes:
    """Wrap an unsigned beacon (discovery.encode's bytes) in a signed envelope."""
    if len(data) < HEADER_BYTES or data[: len(MAGIC)] != MAGIC or data[HEADER_BYTES - 1] != 0:
        raise ValueError("sign() takes the bytes of an unsigned beacon")
    key = ring.current
    envelope = _ENVELOPE.pack(bytes.fromhex(key.id), time.time() if now is None else now,
                              secrets.token_bytes(16))  # fmt: skip
    head = data[: HEADER_BYTES - 1] + bytes((FLAG_SIGNED,)) + envelope + data[HEADER_BYTES:]
    return head + hmac.digest(key.secret, head, "sha256")


@dataclass
class BeaconVerifier:
    """Checks signed beacons: MAC, timestamp window, nonce never seen before."""

    ring: KeyRing
    window_s: float = WINDOW_S
    max_nonces: int = MAX_NONCES
    _nonces: OrderedDict[bytes, float] = field(default_factory=OrderedDict)

    def verify(self, data: bytes, now: float | None = None) -> tuple[bytes, str]:
        """The unsigned beacon bytes and the key id; BeaconRejected (with a reason) if bad."""
        now = time.time() if now is None else now
        if len(data) < HEADER_BYTES or not data[HEADER_BYTES - 1] & FLAG_SIGNED:
            raise BeaconRejected("unsigned", "beacon is not signed (the sender has no key?)")
        if len(data) < MIN_SIGNED_BYTES:
            raise BeaconRejected("bad_signature", "signed beacon too short")
        head, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
        raw_id, sent_at, nonce = _ENVELOPE.unpack_from(head, HEADER_BYTES)
        key = self.ring.get(raw_id.hex())
        if key is None:
            raise BeaconRejected("unknown_key", f"beacon signed with unknown key {raw_id.hex()}")
        if not hmac.compare_digest(mac, hmac.digest(key.secret, head, "sha256")):
            raise BeaconRejected("bad_signature", "beacon signature does not match")
        if not abs(now - sent_at) <= self.window_s:  # also catches NaN
            raise BeaconRejected("stale", f"beacon timestamp off by {now - sent_at:.0f} s")
        self._remember(nonce, now)
        body = head[HEADER_BYTES + _ENVELOPE.size :]
        return head[: HEADER_BYTES - 1] + b"\x00" + body, key.id

    def _remember(self, nonce: bytes, now: float) -> None:
        nonces = self._nonces
        while nonces and (len(nonces) >= self.max_nonces or next(iter(nonces.values())) < now):
            nonces.popitem(last=False)
        if nonce in nonces:
            raise BeaconRejected("replayed", "beacon nonce seen before (replay)")
        # a nonce older than the window is refused as stale, so it need not be kept longer
        nonces[nonce] = now + 2 * self.window_s


# ---- CURVE data links --------------------------------------------------------------------


def _hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) with an empty salt."""
    prk = hmac.digest(b"\x00" * 32, secret, "sha256")
    out, block = b"", b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        out += block
        counter += 1
    return out[:length]


@dataclass(frozen=True)
class CurvePair:
    """A CURVE keypair, both halves Z85-encoded (what ZeroMQ's socket options take)."""

    public: bytes
    secret: bytes = field(repr=False)


def curve_pair(secret: bytes, info: bytes) -> CurvePair:
    """The CURVE keypair derived from a cluster key for one role."""
    secret_z85 = z85.encode(_hkdf(secret, info))
    return CurvePair(zmq.curve_public(secret_z85), secret_z85)


def server_pair(key: Key) -> CurvePair:
    """The keypair every member's input sockets serve with under this key."""
    return curve_pair(key.secret, _SERVER_INFO)


def client_pair(key: Key) -> CurvePair:
    """The keypair every member's output links present under this key."""
    return curve_pair(key.secret, _CLIENT_INFO)


class LinkSecurity:
    """CURVE for a worker's data sockets, with a ZAP authenticator on the same context."""

    def __init__(self, ring: KeyRing) -> None:
        if not zmq.has("curve"):
            raise SecurityError("this libzmq has no CURVE support; install pyzmq's wheel")
        self.ring = ring
        self.server_keys = server_pair(ring.current)
        self.client_keys = client_pair(ring.current)
        self._servers = {k.id: server_pair(k).public for k in ring.keys}
        self.allowed = frozenset(client_pair(k).public for k in ring.keys)
        self.denied = 0
        self._auth: Any = None

    @classmethod
    def start(cls, ctx: zmq.Context[Any], key_file: str | Path) -> LinkSecurity:
        """Read the key file and start the authenticator on `ctx` (before any bind)."""
        security = cls(read_keyring(key_file))
        security.start_authenticator(ctx)
        return security

    def start_authenticator(self, ctx: zmq.Context[Any]) -> None:
        """ZAP on `ctx`: only the ring's client keys get in."""
        from porch.zap import PlainAuthenticator

        auth = PlainAuthenticator(ctx, log=logging.getLogger("porch.zap"))
        auth.start()
        auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)
        self._auth = auth

    def callback(self, domain: str, client_key: bytes) -> bool:
        """ZAP's question: may this client public key (Z85) connect?"""
        ok = client_key in self.allowed
        self.denied += not ok
        return ok

    def serve(self, sock: zmq.Socket[Any]) -> None:
        """Make a socket a CURVE server behind ZAP; call before bind."""
        if self._auth is None or not self._auth.is_alive():
            raise SecurityError("refusing to bind a data socket: the ZAP authenticator is not up")
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.server_keys.secret)

    @property
    def key_id(self) -> str:
        """The id of the key this process serves with (its porchd announces it)."""
        return self.ring.current.id

    def knows(self, wanted: str) -> bool:
        """Whether the ring has the key with this id (a server using it can be reached)."""
        return wanted in self._servers

    def client(self, sock: zmq.Socket[Any], server_key_id: str | None = None) -> None:
        """Make a socket a CURVE client of a server using `server_key_id` (default: current)."""
        server = self._servers.get(server_key_id or "", self.server_keys.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.client_keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.client_keys.secret)

    def stop(self) -> None:
        """Stop the authenticator (before the context is terminated)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
