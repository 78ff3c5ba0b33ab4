"""The `store` setting -> the store the controller keeps its desired state in: `sqlite` (the file
store_path) or `etcd://...` (EtcdStore, with this replica's identity and the fabric's)."""

from __future__ import annotations

import hashlib
import re
import socket

from controller.fabric.etcd_store import EtcdStore
from controller.fabric.store import StateStore, Store
from controller.settings import Settings
from controller.topology import Topology


def topology_digest(topo: Topology) -> str:
    """Same topology, same digest: what an etcd prefix's state is checked against."""
    return hashlib.sha256(topo.model_dump_json().encode()).hexdigest()


def default_replica_id(nsm_address: str | None) -> str:
    """<hostname>-<NSM address>: replicas on one machine serve on different addresses."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{socket.gethostname()}-{nsm_address or 'no-nsm'}").strip("-")


def open_store(settings: Settings, topo: Topology, nsm_address: str | None = None) -> StateStore:
    """The store `settings.store` names; an etcd one connects on `await start()`."""
    if settings.store == "sqlite":
        return Store(settings.store_path)
    return EtcdStore(
        settings.store, settings.store_fabric_id or re.sub(r"[^A-Za-z0-9._-]+", "-", topo.name),
        settings.store_replica_id or default_replica_id(nsm_address),
        topology=topo.name, digest=topology_digest(topo), lease_ttl=settings.store_lease_ttl,
        timeout=settings.store_timeout, leader_suspect=settings.store_leader_suspect, info={"nsm_address": nsm_address or ""})
