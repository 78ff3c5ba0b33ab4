"""Fencing by the switch: two controller clients of one switch, as two replicas hold them. The
follower's stream stays open as a backup and it never writes; a new term's higher election id
deposes the old primary, whose Writes the switch then refuses (PERMISSION_DENIED), and nothing
the old primary was refused is on the switch afterwards (read back).

On both kinds: the softswitch's arbiter and BMv2's (PI) are separate implementations of the
spec's arbitration, and replicas rely on both refusing a deposed primary."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from finsy.proto import U128, p4r, p4r_grpc

from controller.p4rt.client import SwitchClient, SwitchTarget
from controller.p4rt.errors import SwitchError
from controller.p4rt.schema import P4Schema
from controller.pipeline.revisions import pipeline_cookie
from controller.settings import Settings
from controller.targets import device_config
from lab.switches import bmv2_offers_thrift
from tests.e2e.switch_kinds import BMV2, SWITCH_KINDS, controller_overrides, require
from tests.support.fixtures import SoftSwitchProcess, free_port, start_softswitch

TABLE, ACTION = "FabricIngress.fabric_ports", "FabricIngress.mark_fabric"
LEADER_1, FOLLOWER, LEADER_2 = 100 << 64, 7, 200 << 64


@pytest.fixture(params=SWITCH_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return str(request.param)


@pytest.fixture
def switch(kind: str) -> Iterator[SoftSwitchProcess]:
    if kind != BMV2:
        with start_softswitch() as running:
            yield running
        return
    command = shutil.which("simple_switch_grpc")
    assert command is not None
    address = f"127.0.0.1:{free_port()}"
    thrift = ["--thrift-port", str(free_port())] if bmv2_offers_thrift(command) else []
    argv = [command, "--no-p4", "--device-id", "1", *thrift, "--", "--grpc-server-addr", address, "--cpu-port", "255"]
    with start_softswitch(address=address, command=argv) as running:
        yield running


@pytest.fixture
def settings(kind: str, tmp_path: Path) -> Settings:
    return Settings(**controller_overrides(kind, tmp_path))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def replica_client(switch: SoftSwitchProcess, kind: str, settings: Settings, election_id: int,
                         leader: bool) -> AsyncIterator[SwitchClient]:
    schema = P4Schema.from_file(settings.p4info_path)
    p4info = schema.p4info.SerializeToString(deterministic=True)
    config = device_config(kind, settings)
    target = SwitchTarget(f"sw-{election_id}", switch.address, switch.device_id, p4info, config,
                          pipeline_cookie(p4info, [config]))
    client = SwitchClient(target, schema, settings)
    client.set_role(election_id, leader)
    client.start()
    try:
        yield client
    finally:
        await client.stop()


def port_update(c: SwitchClient, port: int, kind: p4r.Update.Type.ValueType = p4r.Update.INSERT) -> p4r.Update:
    return c.schema.table_update(kind, TABLE, {"ingress_port": port}, ACTION, {})


async def raw_write(switch: SoftSwitchProcess, c: SwitchClient, election_id: int, port: int) -> grpc.StatusCode:
    """A Write with `election_id` outside any client's checks: what the switch itself says."""
    async with grpc.aio.insecure_channel(switch.address) as channel:
        request = p4r.WriteRequest(device_id=switch.device_id, election_id=U128.encode(election_id),
                                   updates=[port_update(c, port)])
        try:
            await p4r_grpc.P4RuntimeStub(channel).Write(request, timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK


async def ports_on(c: SwitchClient) -> set[int]:
    return {int.from_bytes(e.match[0].exact.value, "big") for e in await c.read_table_entries(TABLE)}


async def until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


async def test_a_backup_never_writes_and_a_higher_term_deposes_the_primary(switch, kind, settings):
    async with (replica_client(switch, kind, settings, LEADER_1, leader=True) as old,
                replica_client(switch, kind, settings, FOLLOWER, leader=False) as new):
        deposed: list[int] = []
        old.deposed_listeners.append(lambda _c, other: deposed.append(other))
        told: list[tuple[str, bool, str]] = []
        for c in (old, new):
            c.state_listeners.append(lambda c, up, why: told.append((c.name, up, why)))
        assert await old.wait_up(20), "the leader's client never became primary with its pipeline"
        await until(lambda: new.primary_election_id == LEADER_1, 10, "the follower heard who is primary")
        assert not new.up.is_set() and not new.primary
        with pytest.raises(SwitchError) as refused:
            await new.write([port_update(new, 1)])
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        # the switch itself refuses the follower's id, whatever a client's own checks say
        assert await raw_write(switch, new, FOLLOWER, 2) == grpc.StatusCode.PERMISSION_DENIED

        # The old leader writes port after port while the new term's id takes the switch.
        acked: list[int] = []
        error: SwitchError | None = None
        for port in range(10, 400):
            if port == 13:
                new.set_role(LEADER_2, leader=True)
            try:
                await old.write([port_update(old, port)])
                acked.append(port)
            except SwitchError as e:
                error = e
                break
        assert error is not None, "the deposed leader kept writing"
        codes = {e.code for e in error.errors} or {error.code.value[0]}
        assert codes == {grpc.StatusCode.PERMISSION_DENIED.value[0]}, error
        assert await new.wait_up(20), "the new term's client never became primary"
        await until(lambda: deposed == [LEADER_2], 10, f"the old leader heard it was deposed (heard {deposed})")
        assert not old.up.is_set()
        # the switch's refusals are counted; a client that already heard it was deposed refuses
        # on its own ("deposed by ..."), and either way it is PERMISSION_DENIED, never UNAVAILABLE
        by_switch = [e for e in error.errors if e.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
                     and not e.message.startswith("deposed by")]
        assert old.refused_writes == len(by_switch)
        # a deposed primary is not a lost switch, and a backup's answer is not either
        assert [t for t in told if not t[1]] == [], told
        assert await raw_write(switch, new, LEADER_1, 3) == grpc.StatusCode.PERMISSION_DENIED
        # nothing the old leader was refused is on the switch; what it was acknowledged is
        assert await ports_on(new) == set(acked), (acked, error)
        await new.write([port_update(new, 500)])
        assert await ports_on(new) == {*acked, 500}
        assert new.pipeline_pushes == 0, "the takeover pushed the pipeline again"
