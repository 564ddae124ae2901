"""The directory: where each pipeline lives and what state it is in, in one typed definition.

Two messages carry it:
- a beacon's entries (`Entry`), from one supervisor to the others (UDP, other hosts): the
  beacon's bytes are coded in porch/discovery.py, versioned by its header byte;
- the DIRECTORY control message (`DirectoryEntry` by pipeline name), from a supervisor to its
  workers (local IPC): coded here, `encode_directory` on the supervisor's side and
  `decode_directory` on the worker's.

A directory entry's state is a worker's state, or `Withdrawn.WITHDRAWN`: a remote pipeline our
workers send to whose host fell silent (the broker remembers it, the worker holds the data).

Versions: the DIRECTORY message carries `v` (DIRECTORY_VERSION). A message without `v` is the
same format (what supervisors sent before the field existed) and is taken; any other version is
refused with a DirectoryError that says so (the worker logs it as an error): a worker and its
supervisor are one installation, so a mismatch means porch was upgraded while porchd ran.
Fields a decoder does not know are ignored in both messages, so an optional field can be added
without a new version.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard

from porch.control import MessageType, WorkerState, directory_state, encode
from porch.errors import ControlError

DIRECTORY_VERSION = 1
LOCAL_HOST = "local"  # a directory entry's host for a pipeline of this supervisor


class Withdrawn(enum.StrEnum):
    """The directory's state for a remote pipeline whose host fell silent while our workers
    send to it: no endpoint, output held until it is announced again."""

    WITHDRAWN = "withdrawn"


EntryState = WorkerState | Withdrawn


class DirectoryError(ControlError):
    """A DIRECTORY message a worker cannot read (another version, or not one at all)."""


def entry_state(value: object) -> EntryState | None:
    """A state on the wire as the enum it names; None when it names none."""
    if value == Withdrawn.WITHDRAWN:
        return Withdrawn.WITHDRAWN
    return directory_state(value)


@dataclass(frozen=True)
class Entry:
    """One pipeline a beacon announces."""

    name: str
    endpoint: str | None
    state: WorkerState
    instance: int | None = None
    key: str | None = None  # the cluster key id its worker serves with (None: the beacon's)
    endpoints: tuple[str, ...] = ()  # one per data interface, `endpoint` first (several only)
    targets: tuple[str, ...] = ()  # its target pipelines: a target learns its sources' names
    final: bool = False  # ended for good: its supervisor will not start it again on its own
    ordered: bool = False  # a replica of a pipeline with `"ordered": true`
    partition_by: str | None = None  # a replica of a pipeline with `"partition_by": FIELD`

    def __post_init__(self) -> None:
        if not isinstance(self.state, WorkerState):  # a state's name: "running"
            object.__setattr__(self, "state", WorkerState(self.state))

    @property
    def live(self) -> bool:
        """Whether the pipeline is up or coming back (not finished, stopped or failed)."""
        return not self.state.ended


@dataclass(frozen=True)
class DirectoryEntry:
    """What a worker is told of one pipeline: itself, a target, or a source that targets it."""

    state: EntryState
    endpoint: str | None = None  # where to connect to send it data (None: nowhere now)
    host: str = LOCAL_HOST  # "local", or the remote host's address
    instance: int | None = None  # which start of its worker the endpoint belongs to
    key: str | None = None  # the cluster key id its worker serves with
    targets: tuple[str, ...] = ()  # its target pipelines (a target learns its sources)
    final: bool = False  # ended for good: nothing will start it again on its own
    since: float | None = None  # withdrawn: since when (unix s)
    # Replicas (docs/replicas.md): an entry named NAME#TAG-K is one replica of pipeline NAME
    # (porch.names.pipeline_of); these two are its config's, for its senders and targets.
    ordered: bool = False  # its targets re-sequence its output into its input's order
    partition_by: str | None = None  # its senders route each value by value[FIELD]


@dataclass(frozen=True)
class Directory:
    """One DIRECTORY message as a worker reads it."""

    pipelines: dict[str, DirectoryEntry]
    names: tuple[str, ...] | None = None  # every pipeline's name, sent when they changed
    malformed: tuple[str, ...] = ()  # names of entries that were not valid (left out)


def encode_entry(entry: DirectoryEntry) -> dict[str, object]:
    """A directory entry as a JSON object."""
    out: dict[str, object] = {
        "endpoint": entry.endpoint,
        "state": entry.state.value,
        "instance": entry.instance,
        "host": entry.host,
        "key": entry.key,
        "targets": list(entry.targets),
        "final": entry.final,
    }
    if entry.since is not None:
        out["since"] = entry.since
    if entry.ordered:
        out["ordered"] = True
    if entry.partition_by is not None:
        out["partition_by"] = entry.partition_by
    return out


def encode_directory(
    pipelines: Mapping[str, DirectoryEntry], names: Sequence[str] | None = None
) -> bytes:
    """The DIRECTORY control message: the entries a worker uses, and every pipeline's name
    when the names changed."""
    fields: dict[str, object] = {
        "v": DIRECTORY_VERSION,
        "pipelines": {name: encode_entry(entry) for name, entry in pipelines.items()},
    }
    if names is not None:
        fields["names"] = list(names)
    return encode(MessageType.DIRECTORY, **fields)


def decode_directory(message: Mapping[str, object]) -> Directory:
    """A decoded DIRECTORY control message as typed entries. DirectoryError when it is of
    another version or not a directory; entries that are not valid are left out and named in
    `malformed`."""
    version = message.get("v", DIRECTORY_VERSION)
    if version != DIRECTORY_VERSION:
        raise DirectoryError(
            f"directory version {version!r} is not supported (this worker reads "
            f"{DIRECTORY_VERSION}): porch was upgraded while its supervisor ran; restart porchd"
        )
    raw = message.get("pipelines", {})
    if not isinstance(raw, dict):
        raise DirectoryError("directory: pipelines must be a JSON object")
    raw_names = message.get("names")
    names = (
        tuple(n for n in raw_names if isinstance(n, str)) if isinstance(raw_names, list) else None
    )
    pipelines: dict[str, DirectoryEntry] = {}
    malformed: list[str] = []
    for name, value in raw.items():
        entry = decode_entry(value)
        if entry is None:
            malformed.append(str(name))
        else:
            pipelines[str(name)] = entry
    return Directory(pipelines, names, tuple(malformed))


def decode_entry(value: object) -> DirectoryEntry | None:
    """One directory entry from JSON; None when it is not one. Fields that are absent or of
    the wrong type take their defaults (an older supervisor sent fewer)."""
    if not isinstance(value, dict):
        return None
    state = entry_state(value.get("state"))
    if state is None:
        return None
    targets = value.get("targets")
    since = value.get("since")
    if not _finite(since):
        since = None
    return DirectoryEntry(
        state=state,
        endpoint=_text(value.get("endpoint")),
        host=_text(value.get("host")) or LOCAL_HOST,
        instance=_whole(value.get("instance")),
        key=_text(value.get("key")),
        targets=tuple(t for t in targets if isinstance(t, str))
        if isinstance(targets, list)
        else (),
        final=value.get("final") is True,
        since=since,
        ordered=value.get("ordered") is True,
        partition_by=_text(value.get("partition_by")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _finite(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
