"""What porchd reports beside its pipelines: remote pipelines in `status`, the `graph` nodes,
and the rates and log figures it adds to each pipeline's status (pure functions of the
supervisor's and the broker's state; porch/daemon.py answers the commands with them)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from porch.broker import Broker
from porch.discovery import Remote
from porch.graph import Node
from porch.rates import RateMeter
from porch.status import DaemonFigures, PipelineStatus, RemoteStatus
from porch.worker_handle import WorkerHandle

RATE_COUNTERS = ("msgs_in", "msgs_out")


def remote_rows(broker: Broker | None, local_names: Sequence[str]) -> list[RemoteStatus]:
    """The remote pipelines discovery knows, then the withdrawn ones, as `status` lists them."""
    if broker is None:
        return []
    now = time.monotonic()
    chosen = broker.table.resolve(list(local_names))
    rows = [remote_row(r, now, chosen.get(r.name) == r) for r in broker.remotes()]
    rows += [withdrawn_row(r, since) for r, since in broker.withdrawn.values()]
    return rows


def remote_row(remote: Remote, now: float, used: bool) -> RemoteStatus:
    """A remote pipeline in `status`: `used` when this host's workers are given its endpoint."""
    return RemoteStatus(
        name=remote.name,
        host=remote.host,
        hostname=remote.hostname,
        daemon_id=remote.daemon_id,
        origin=remote.origin,
        endpoint=remote.endpoint,
        state=str(remote.state),
        last_seen_s=round(now - remote.last_seen, 1),
        used=used,
    )


def withdrawn_row(remote: Remote, since: float) -> RemoteStatus:
    """A remote pipeline whose host fell silent: still listed, as withdrawn since `since`."""
    row = remote_row(remote, time.monotonic(), False)
    return RemoteStatus(row.name, row.host, row.hostname, row.daemon_id, row.origin, None,
                        "withdrawn", row.last_seen_s, False, since)  # fmt: skip


def graph_nodes(handles: Iterable[WorkerHandle], broker: Broker | None) -> list[Node]:
    """The local pipelines, then one node per remote name that is not local (hosts joined
    when several claim it)."""
    local = [Node(h.name, h.state.value, h.config.target_pipeline_names, "local") for h in handles]
    names = {n.name for n in local}
    hosts: dict[str, list[str]] = {}
    states: dict[str, str] = {}
    for remote in broker.remotes() if broker is not None else []:
        if remote.name not in names:
            hosts.setdefault(remote.name, []).append(remote.host)
            states[remote.name] = str(remote.state)
    others = [Node(name, states[name] if len(where) == 1 else "conflict", (), ", ".join(where))
              for name, where in hosts.items()]  # fmt: skip
    return local + others


def encode_nodes(nodes: Sequence[Node]) -> dict[str, object]:
    """porchd's `graph` result (docs/supervisor-contract.md)."""
    return {"nodes": [{"name": n.name, "state": n.state, "targets": list(n.targets),
                       "host": n.host} for n in nodes]}  # fmt: skip


def with_daemon_figures(
    pipelines: Sequence[PipelineStatus], dropped: Mapping[str, int], rates: RateMeter, now: float
) -> list[PipelineStatus]:
    """Each status with the lines porchd could not write to its log file (a full disk) and
    its message rates (a pipeline without a process moves nothing)."""

    def figures(p: PipelineStatus) -> DaemonFigures:
        rate = {c: round(rates.per_s(p.name, c, now) if p.process.pid else 0, 1)
                for c in RATE_COUNTERS}  # fmt: skip
        return DaemonFigures(dropped.get(p.name, 0), rate["msgs_in"], rate["msgs_out"])

    return [p.with_daemon_figures(figures(p)) for p in pipelines]
