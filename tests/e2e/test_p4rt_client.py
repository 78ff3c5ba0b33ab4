"""The controller's P4Runtime client against a real softswitch process: what happens to writes
when the switch freezes with them in flight, and that the client works again when it returns.

Softswitch only: its subject is the client's handling of a frozen switch, which the softswitch
process shows the same way on every run; the BMv2 suites (fabric, heal) freeze BMv2 too."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from finsy.proto import p4r

from controller.p4rt.client import SwitchClient, SwitchTarget
from controller.p4rt.errors import SwitchError
from controller.p4rt.schema import P4Schema
from controller.pipeline.revisions import pipeline_cookie
from controller.settings import Settings
from controller.targets import device_config
from tests.support.fixtures import SoftSwitchProcess, softswitch  # noqa: F401  (fixture)


@pytest.fixture
async def client(softswitch: SoftSwitchProcess) -> AsyncIterator[SwitchClient]:
    settings = Settings()
    schema = P4Schema.from_file(settings.p4info_path)
    p4info = schema.p4info.SerializeToString(deterministic=True)
    config = device_config("softswitch", settings)
    target = SwitchTarget("sw", softswitch.address, softswitch.device_id, p4info, config, pipeline_cookie(p4info, [config]))
    c = SwitchClient(target, schema, settings)
    c.start()
    try:
        assert await c.wait_up(10), "the client never became primary with its pipeline"
        yield c
    finally:
        os.kill(softswitch.process.pid, signal.SIGCONT)
        await c.stop()


def port_entry(c: SwitchClient, port: int) -> p4r.Update:
    return c.schema.table_update(p4r.Update.INSERT, "FabricIngress.fabric_ports", {"ingress_port": port},
                                 "FabricIngress.mark_fabric", {})


async def test_write_in_flight_to_a_frozen_switch_fails_and_the_client_recovers(client, softswitch):
    pid = softswitch.process.pid
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    with pytest.raises(SwitchError) as info:
        # Sent before the switch is seen down: the RPC is in flight when the channel closes.
        await asyncio.wait_for(client.write([port_entry(client, 1)]), 4)
    assert time.monotonic() - t0 < client.settings.rpc_timeout, "the write waited for its deadline"
    codes = {e.code for e in info.value.errors} or {info.value.code.value[0]}
    assert codes <= {grpc.StatusCode.CANCELLED.value[0], grpc.StatusCode.UNAVAILABLE.value[0]}, info.value
    assert not client.up.is_set()

    os.kill(pid, signal.SIGCONT)
    assert await client.wait_up(10), "the client did not come back after the switch thawed"
    await asyncio.wait_for(client.write([port_entry(client, 2)]), 4)
    ports = sorted(int.from_bytes(e.match[0].exact.value, "big")
                   for e in await client.read_table_entries("FabricIngress.fabric_ports"))
    # Port 1's write may or may not have reached the switch before it froze; port 2's did.
    assert 2 in ports and set(ports) <= {1, 2}, ports
