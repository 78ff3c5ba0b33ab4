"""What the controller may expect of each kind of target: one frozen profile per `Target`.

The rest of the controller asks a profile (`profile(switch.target)`) and never compares target
names, so a new target, or a fixed quirk of an old one, is a change here only (the per-driver
behaviours of ONOS, kept as flags).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from finsy.proto import p4i

from controller.settings import Settings
from controller.targets import build_files, dpdk, tofino
from controller.targets.errors import TargetError
from controller.targets.kinds import Target
from controller.targets.p4info_ports import check_port_width

DEFAULT_CPU_PORT = 255  # softswitch and BMv2 when the topology gives none; the lab passes it as --cpu-port
V1MODEL_PORT_MAX = 2**9 - 1  # v1model's 9-bit ports
# Stratum without --experimental_enable_p4runtime_translation (its default, and p4nsm's) takes
# the SDK's 9-bit dev ports in P4Runtime, although the TNA program's P4Info says 32 bits.
TOFINO_PORT_MAX = 2**9 - 1
PNA_PORT_MAX = 2**32 - 1  # PNA's PortId_t; infrap4d passes DPDK port numbers through as they are
STRATUM_GRPC_PORT = 9559  # Stratum's and infrap4d's P4Runtime port


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    kind: Target
    # ForwardingPipelineConfig.p4_device_config for this kind, read from the build outputs
    device_config: Callable[[Settings], bytes]
    # The data plane fails over on its own when a watched port loses carrier, so the head end
    # may get a protection group whose members watch their ports.
    honours_watch_ports: bool
    # A read-back action profile group shows each member's own watch port; when it does not,
    # anti-entropy must not compare watch ports, or it would "repair" groups that are right.
    group_read_back_reliable: bool
    # The largest port number a topology may give a switch of this kind.
    port_max: int
    # The CPU port a topology may leave out; None when it depends on the hardware. A target
    # without packet I/O has no CPU port to give.
    default_cpu_port: int | None
    # PacketOut leaves a port and PacketIn reports probes: link probes work. Without it (P4-DPDK
    # drops PacketOut and sends no PacketIn) links are not probed; runtime.py leaves them out.
    has_packet_io: bool = True
    # It serves /interfaces/interface[name=*]/state/{oper-status,ifindex} over gNMI (ON_CHANGE
    # Subscribe) on its P4Runtime address, ifindex being the P4Runtime port: port state reaches
    # the controller without probes (controller/gnmi/, heal/port_state.py).
    has_gnmi_port_state: bool = False
    # Its P4Runtime server speaks TLS unless told otherwise (infrap4d): the topology gives the
    # switch a `tls_ca`, and runtime.py warns when one such switch has none.
    needs_tls: bool = False
    # RECONCILE_AND_COMMIT keeps its entities across a pipeline change (the softswitch carries
    # them over by name). simple_switch_grpc accepts it, but then reads groups back as "Cannot
    # map group handle to group id" and tables as "Table state out-of-sync with target" (seen
    # here, simple_switch_grpc 1.15.5); Stratum answers UNIMPLEMENTED. Where False a pipeline
    # rollout commits with VERIFY_AND_COMMIT and rewrites the switch's entities.
    reconcile_commit: bool = False
    # Refuses a device config of the wrong kind given as bytes (a pipeline revision's), naming
    # `source`; None: the switch's own VERIFY is the check.
    config_check: Callable[[bytes, str], None] | None = None
    # How wide the P4Info's port fields are, and which P4Info has them so (p4info_ports.py).
    p4info_port_bits: int = 9
    p4info_hint: str = "p4/nsm_fabric.p4info.txtpb (p4info_path)"
    # What a topology may leave out of the switch's entry, and the lowest device id it takes
    # (Stratum and infrap4d refuse device_id 0).
    default_grpc_port: int | None = None
    default_device_id: int | None = None
    min_device_id: int = 0

    def check_p4info(self, p4info: p4i.P4Info, source: str) -> None:
        """Refuse a P4Info whose port fields are not this target's width (TargetError naming the field)."""
        check_port_width(p4info, source, self.kind, self.p4info_port_bits, self.p4info_hint)


def _softswitch_config(settings: Settings) -> bytes:
    return settings.softswitch_config_path.read_bytes()


def _bmv2_config(settings: Settings) -> bytes:
    path = settings.bmv2_json_path
    if not path.exists():
        raise TargetError(f"BMv2 JSON {path} is missing: build it with `make -C p4 bmv2` (needs p4c)")
    return build_files.bmv2_json(path)


def _tofino_config(settings: Settings) -> bytes:
    # One file to hand over wins over the directory layout.
    if settings.tofino_conf_path is not None:
        return tofino.from_conf(settings.tofino_conf_path)
    return tofino.from_directory(settings.tofino_pipeline_dir)


def _dpdk_config(settings: Settings) -> bytes:
    return dpdk.from_directory(settings.dpdk_pipeline_dir)


PROFILES: dict[Target, TargetProfile] = {
    p.kind: p
    for p in (
        TargetProfile(Target.SOFTSWITCH, _softswitch_config, honours_watch_ports=True, group_read_back_reliable=True,
                      port_max=V1MODEL_PORT_MAX, default_cpu_port=DEFAULT_CPU_PORT, has_gnmi_port_state=True,
                      reconcile_commit=True),
        # simple_switch_grpc returns every member of a group with the last member's watch port.
        TargetProfile(Target.BMV2, _bmv2_config, honours_watch_ports=True, group_read_back_reliable=False,
                      port_max=V1MODEL_PORT_MAX, default_cpu_port=DEFAULT_CPU_PORT, config_check=build_files.check_bmv2_json),
        # Stratum on Tofino refuses watch ports: the controller's switch-over is the only
        # protection there. So no group is written and none read back; how Stratum reports
        # group members is unverified, and not comparing watch ports is the safe side.
        # Its CPU port depends on the chip and its pipe count (320, 192, 0): no default. Its
        # device id is the chassis config's node id: no default either.
        TargetProfile(Target.TOFINO, _tofino_config, honours_watch_ports=False, group_read_back_reliable=False,
                      port_max=TOFINO_PORT_MAX, default_cpu_port=None, p4info_port_bits=32,
                      p4info_hint="the P4Info bf-p4c wrote for p4/nsm_fabric_tna.p4 (p4info_path)",
                      default_grpc_port=STRATUM_GRPC_PORT, min_device_id=1, has_gnmi_port_state=True),
        # infrap4d: no packet I/O on DPDK, TLS by default, watch ports not honoured; the
        # reference client's device id 1.
        TargetProfile(Target.DPDK, _dpdk_config, honours_watch_ports=False, group_read_back_reliable=False,
                      port_max=PNA_PORT_MAX, default_cpu_port=None, has_packet_io=False, needs_tls=True,
                      p4info_port_bits=32, p4info_hint="p4/nsm_fabric_pna.p4info.txtpb (p4info_path)",
                      default_grpc_port=STRATUM_GRPC_PORT, default_device_id=1, min_device_id=1,
                      # its gNMI serves ports it created; oper-status and ifindex there are
                      # unverified (not run here)
                      has_gnmi_port_state=True),
    )
}


def profile(kind: Target | str) -> TargetProfile:
    """The profile of a target kind; a kind without one is a TargetError naming the known kinds."""
    try:
        return PROFILES[Target(kind)]
    except (ValueError, KeyError):
        known = ", ".join(PROFILES)
        raise TargetError(f"unknown target kind {kind!r}: known kinds are {known}") from None


def device_config(kind: Target | str, settings: Settings) -> bytes:
    """The p4_device_config bytes for a switch of this kind."""
    return profile(kind).device_config(settings)
