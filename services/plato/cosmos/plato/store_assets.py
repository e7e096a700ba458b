"""Plato's JetStream assets declared: how they are sized (:class:`StoreConfig`) and every stream and
bucket that :mod:`cosmos.plato.store` lists, created or brought to that configuration
(:func:`ensure_assets`, which :meth:`cosmos.plato.store.PlatoStore.ensure` runs)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from cosmos.protocol import subjects
from cosmos.runtime import jetstream

DAY = 24 * 3600.0


class Storage(enum.StrEnum):
    """Where JetStream keeps Plato's streams and buckets."""

    FILE = "file"
    MEMORY = "memory"


@dataclass(frozen=True)
class StoreConfig:
    """Sizing and durability of Plato's JetStream assets."""

    storage: Storage = Storage.FILE
    """File (durable across server restarts) or memory."""
    replicas: int = 1
    """Replicas per stream and bucket (3 in a JetStream cluster)."""
    history_days: float = 30.0
    """How long workflow histories are kept."""
    duplicate_window: float = 600.0
    """Seconds within which a re-published message with the same Nats-Msg-Id is dropped."""
    ack_timeout: float = 5.0
    """Seconds to wait for JetStream to confirm a write before giving up on it."""


@dataclass(frozen=True)
class Buckets:
    """Plato's key-value buckets and object store, once they exist."""

    definitions: KeyValue
    workflows: KeyValue
    steps: KeyValue
    blobs: ObjectStore


async def ensure_assets(js: JetStreamContext, config: StoreConfig) -> Buckets:
    """Create (or update) every stream and bucket; the buckets."""
    storage = StorageType.FILE if config.storage is Storage.FILE else StorageType.MEMORY
    replicas = config.replicas
    window = config.duplicate_window
    # A stream that exists with another configuration (an upgrade, R1 -> R3) is brought to ours.
    await jetstream.ensure_stream(
        js,
        StreamConfig(
            name=subjects.INBOX_STREAM,
            subjects=[subjects.INBOX_ALL, subjects.TIMERS_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            allow_msg_schedules=True,
            duplicate_window=window,
            storage=storage,
            num_replicas=replicas,
        ),
    )
    await jetstream.ensure_stream(
        js,
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_ALL],
            retention=RetentionPolicy.LIMITS,
            max_age=config.history_days * DAY,
            duplicate_window=window,
            allow_direct=True,
            storage=storage,
            num_replicas=replicas,
        ),
    )
    await jetstream.ensure_stream(
        js,
        StreamConfig(
            name=subjects.TASKS_STREAM,
            subjects=[subjects.TASKS_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=window,
            storage=storage,
            num_replicas=replicas,
        ),
    )
    await jetstream.ensure_stream(
        js,
        StreamConfig(
            name=subjects.CONTROL_STREAM,
            subjects=[subjects.CANCELS_ALL, subjects.NOTIFY_ALL],
            retention=RetentionPolicy.LIMITS,
            max_age=DAY,
            discard=DiscardPolicy.OLD,
            duplicate_window=window,
            storage=storage,
            num_replicas=replicas,
        ),
    )
    definitions = await jetstream.ensure_key_value(
        js,
        KeyValueConfig(bucket=subjects.DEFINITIONS_BUCKET, history=1, storage=storage, replicas=replicas),
    )
    workflows = await jetstream.ensure_key_value(
        js,
        KeyValueConfig(bucket=subjects.WORKFLOWS_BUCKET, history=1, storage=storage, replicas=replicas),
    )
    steps = await jetstream.ensure_key_value(
        js,
        KeyValueConfig(bucket=subjects.STEPS_BUCKET, history=1, storage=storage, replicas=replicas),
    )
    blobs = await jetstream.ensure_object_store(
        js,
        subjects.BLOBS_BUCKET,
        ObjectStoreConfig(storage=storage, replicas=replicas),
    )
    return Buckets(definitions, workflows, steps, blobs)
