"""An NSM Request over real gRPC while the etcd store has lost its quorum: refused with
UNAVAILABLE and a message saying why, nothing stored is lost, and once the quorum is back the
same controller serves again without a restart. The fabric is real (fake switches,
tests/unit/fabric_rig.py); etcd is a real 3-member cluster (tests/support/etcd_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from controller.fabric.etcd_store import EtcdStore
from controller.fabric.model import ConnectionPlan
from controller.nsm.base.channels import dial_target
from controller.nsm.server import NsmServer
from nsm_api import networkservice_pb2_grpc
from tests.conformance.nsm_support import nsc_channel, nsc_request, nsm_settings
from tests.e2e.nsm_fixtures import Endpoints
from tests.support.etcd_cluster import EtcdCluster, until_stored
from tests.unit.fabric_rig import DIAMOND, Rig

pytestmark = pytest.mark.timeout(120)


async def test_request_without_quorum_is_unavailable_and_service_resumes(cluster: EtcdCluster, tmp_path: Path) -> None:
    settings = nsm_settings(tmp_path)
    store = EtcdStore(cluster.url, "diamond", "r1", topology="diamond", digest="d", lease_ttl=1, timeout=1.0)
    await store.start()
    server: NsmServer | None = None
    endpoints = Endpoints(settings)
    rig = Rig(DIAMOND, hosts={"h1": ("s1", 1), "h3": ("s4", 1)}, store=store)
    try:
        await store.election.wait_term(10)  # type: ignore[union-attr]
        await rig.start()
        kept = await rig.fabric.connect("h1", "h3", conn_id="kept")
        server = NsmServer(rig.fabric, settings)
        address = await server.start("127.0.0.1:0")
        await endpoints.start(address, "icmp", "h3", "10.60.0.0/24")
        channel = nsc_channel(dial_target(address))

        lost = cluster.lose_quorum()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await networkservice_pb2_grpc.NetworkServiceStub(channel).Request(nsc_request())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "etcd" in (info.value.details() or "") and "did not commit" in (info.value.details() or "")
        assert set(rig.fabric.plans) == {"kept"}  # the refused connection left nothing

        cluster.regain_quorum(lost)
        await until_stored(lambda: rig.fabric.connect("h1", "h3", conn_id="after"))
        held = cluster.get("/p4nsm/diamond/c/", prefix=True)
        assert ConnectionPlan.model_validate_json(held["/p4nsm/diamond/c/kept"]) == kept
        assert ConnectionPlan.model_validate_json(held["/p4nsm/diamond/c/after"]).state == "up"
        await channel.close()
    finally:
        await endpoints.stop_all()
        if server is not None:
            await server.stop(0)
        await rig.fabric.stop()
        await store.stop()
