"""Replica roles on a real etcd cluster and a real softswitch (no Mininet): two controllers of one
fabric, as `p4nsm run` builds them with `store=etcd://...`. The follower keeps a backup stream and
never writes; its NSM address names the leader; when the leader goes the follower's term id takes
the switch with one arbitration, the pipeline is kept and the reconcile writes nothing; a stepped-
down replica writes nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r

from controller.p4rt.errors import SwitchError
from controller.replication import leader_election_id, term_of
from controller.runtime import Controller
from controller.settings import Settings
from controller.topology import Topology, parse_topology
from nsm_api import networkservice_pb2, networkservice_pb2_grpc
from tests.support.etcd_cluster import EtcdCluster, running_cluster
from tests.support.fixtures import SoftSwitchProcess, start_softswitch
from tests.support.settings import settings_for_test

TABLE, ACTION = "FabricIngress.fabric_ports", "FabricIngress.mark_fabric"


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    yield from running_cluster(tmp_path)


@pytest.fixture
def switch() -> Iterator[SoftSwitchProcess]:
    with start_softswitch() as running:
        yield running


def one_switch(address: str) -> Topology:
    return parse_topology(f"name: roles\nswitches:\n  - name: s1\n    device_id: 1\n    grpc_addr: {address}\n"
                          "    target: softswitch\n    ports: [1, 2]\n")


def replica_settings(cluster: EtcdCluster, fabric: str, name: str, tmp: Path) -> Settings:
    return settings_for_test(store=cluster.url, store_fabric_id=fabric, store_replica_id=name,
                             store_path=str(tmp / f"{name}.sqlite"), nsm_run_dir=str(tmp / f"nsm-{name}"))


@contextlib.asynccontextmanager
async def replica(topo: Topology, settings: Settings, nsm: str) -> AsyncIterator[Controller]:
    """A started replica; stopped at the end unless the test stopped it (`ctl.stopped`)."""
    ctl = Controller(topo, settings, nsm_address=nsm)
    await ctl.start()
    stop = ctl.stop
    done: list[bool] = []

    async def stop_once() -> None:
        if not done:
            done.append(True)
            await stop()

    ctl.stop = stop_once  # type: ignore[method-assign]
    try:
        yield ctl
    finally:
        await stop_once()


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


def leads(ctl: Controller) -> bool:
    assert ctl.replication is not None
    return ctl.replication.role == "leader" and all(c.up.is_set() for c in ctl.clients.values()) \
        and ctl.fabric.ready_switches >= set(ctl.clients)


async def test_a_follower_takes_over_with_one_arbitration_and_writes_nothing_before(switch, etcd_cluster, tmp_path):
    topo = one_switch(switch.address)
    fabric = f"roles-{uuid.uuid4().hex[:6]}"
    one, two = (replica_settings(etcd_cluster, fabric, n, tmp_path) for n in ("r1", "r2"))
    nsm_two = f"unix://{tmp_path / 'r2.sock'}"
    async with replica(topo, one, f"unix://{tmp_path / 'r1.sock'}") as first:
        await until(lambda: leads(first), 20, "r1 leads with its switch up and reconciled")
        assert first.replication is not None
        term_one = first.replication.term
        assert first.clients["s1"].election_id == leader_election_id(term_one)
        sw_one = first.clients["s1"]
        async with replica(topo, two, nsm_two) as second:
            assert second.replication is not None and second.replication.role == "follower"
            sw_two = second.clients["s1"]
            await until(lambda: sw_two.primary_election_id == sw_one.election_id, 10, "the follower heard the primary's id")
            assert not sw_two.up.is_set() and sw_two.sessions == 1
            with pytest.raises(SwitchError) as refused:
                await sw_two.write([sw_two.schema.table_update(p4r.Update.INSERT, TABLE, {"ingress_port": 1}, ACTION, {})])
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
            # the follower's NSM address refuses, naming the leader
            async with grpc.aio.insecure_channel(nsm_two) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await networkservice_pb2_grpc.NetworkServiceStub(channel).Request(
                        networkservice_pb2.NetworkServiceRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "follower" in (info.value.details() or "") and "r1" in (info.value.details() or ""), info.value.details()
            status = second.replica_status()
            assert status["role"] == "follower" and status["leader"] == "r1", status

            await first.stop()  # revokes its lease: the follower need not wait for the TTL
            await until(lambda: leads(second), 20, "r2 leads with its switch up and reconciled")
            assert second.replication is not None
            term_two = second.replication.term
            assert term_two > term_one
            assert sw_two.election_id == leader_election_id(term_two) and term_of(sw_two.election_id) == term_two
            assert sw_two.sessions == 1, "the takeover opened a new stream instead of one arbitration"
            assert sw_two.pipeline_pushes == 0, "the takeover pushed the pipeline again"
            assert "s1" in second.fabric.last_reconcile and sum(second.fabric.last_reconcile["s1"]) == 0, second.fabric.last_reconcile
            assert second.replica_status()["role"] == "leader"

            # stepping down stops writes at once
            second.replication.step_down("test")
            with pytest.raises(SwitchError) as refused:
                await sw_two.write([sw_two.schema.table_update(p4r.Update.INSERT, TABLE, {"ingress_port": 2}, ACTION, {})])
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert second.replication.stepped_down.is_set()
