"""What porchd reports beside its pipelines: remote pipelines in `status`, the `graph` nodes,
and the rates and log figures it adds to each pipeline's status (pure functions of the
supervisor's and the broker's state; porch/daemon.py answers the commands with them)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from porch.broker import Broker
from porch.discovery import Remote
from porch.graph import Node, Replica, node_json
from porch.names import is_replica, pipeline_of
from porch.rates import RateMeter
from porch.status import DaemonFigures, PipelineStatus, RemoteStatus, derived_state
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
    when several claim it). A replicated pipeline is one node with its replicas in it, the
    other hosts' replicas of it too."""
    local: dict[str, Node] = {}
    for h in handles:
        name = pipeline_of(h.name)
        node = local.get(name) or Node(name, "", h.config.target_pipeline_names, "local")
        if is_replica(h.name):
            node = _with_replica(node, Replica(h.name, h.state.value))
        else:
            node = Node(name, h.state.value, node.targets, "local", node.replicas)
        local[name] = node
    hosts: dict[str, list[str]] = {}
    states: dict[str, str] = {}
    remote_replicas: dict[str, list[Replica]] = {}
    for remote in broker.remotes() if broker is not None else []:
        name = pipeline_of(remote.name)
        if is_replica(remote.name):
            replica = Replica(remote.name, str(remote.state), remote.host)
            if name in local:
                local[name] = _with_replica(local[name], replica)
            else:
                remote_replicas.setdefault(name, []).append(replica)
        elif remote.name not in local:
            hosts.setdefault(remote.name, []).append(remote.host)
            states[remote.name] = str(remote.state)
    others = [Node(name, states[name] if len(where) == 1 else "conflict", (), ", ".join(where))
              for name, where in hosts.items()]  # fmt: skip
    for name, replicas in remote_replicas.items():
        if name not in hosts:  # a plain name beside replicas of it (a conflict) is shown as such
            node = Node(name, "", (), "")
            for replica in replicas:
                node = _with_replica(node, replica)
            others.append(node)
    return list(local.values()) + others


def _with_replica(node: Node, replica: Replica) -> Node:
    """`node` with one more replica: its state derived again, its hosts joined."""
    replicas = (*node.replicas, replica)
    hosts = ", ".join(dict.fromkeys(r.host for r in replicas))
    state = derived_state(r.state for r in replicas)
    return Node(node.name, state, node.targets, hosts, replicas)


def encode_nodes(nodes: Sequence[Node]) -> dict[str, object]:
    """porchd's `graph` result (docs/supervisor-contract.md)."""
    return {"nodes": [node_json(n) for n in nodes]}


def with_daemon_figures(
    pipelines: Sequence[PipelineStatus], dropped: Mapping[str, int], rates: RateMeter, now: float
) -> list[PipelineStatus]:
    """Each status with the lines porchd could not write to its log file (a full disk) and
    its message rates (a pipeline without a process moves nothing); a replicated pipeline's
    per replica (keyed by process name), and their totals."""

    def figures(p: PipelineStatus) -> DaemonFigures:
        rate = {c: round(rates.per_s(p.name, c, now) if p.process.pid else 0, 1)
                for c in RATE_COUNTERS}  # fmt: skip
        return DaemonFigures(dropped.get(p.name, 0), rate["msgs_in"], rate["msgs_out"])

    return [p.each_process(lambda r: r.with_daemon_figures(figures(r))) for p in pipelines]
