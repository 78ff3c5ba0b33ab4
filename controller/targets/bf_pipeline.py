"""Stratum's BfPipelineConfig: the p4_device_config of Tofino (stratum_bfrt) and of P4-DPDK (infrap4d).

Both servers take the same message, Tofino's as `stratum.hal.barefoot.BfPipelineConfig`
(stratum/hal/lib/barefoot/bf.proto), P4-DPDK's as the TDI one, which adds field 4:
    string p4_name = 1; bytes bfruntime_info = 2; repeated Profile profiles = 3;
    PacketIoConfig packet_io_config = 4;   (TDI only)
    Profile { string profile_name = 1; bytes context = 2; bytes binary = 3; repeated uint32 pipe_scope = 4; }
    PacketIoConfig { repeated uint32 ports = 1; uint32 nb_rxqs = 2; uint32 nb_txqs = 3; }
The package name does not reach the wire, so one declaration serves both. finsy does not ship
these protos, so the message is declared here from its field numbers; tests/unit/test_targets.py
decodes what this writes with a declaration of its own.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

# One pipeline over all four pipes: what bf-p4c's .conf and Stratum's own builder give a
# single-program device, and what IPDK's examples give P4-DPDK.
ALL_PIPES = (0, 1, 2, 3)

_PACKAGE = "p4nsm.stratum"
_POOL = descriptor_pool.DescriptorPool()


def _declare() -> type:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="p4nsm_bf_pipeline.proto", package=_PACKAGE, syntax="proto3")
    msg = fdp.message_type.add(name="BfPipelineConfig")
    msg.field.add(name="p4_name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    msg.field.add(name="bfruntime_info", number=2, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    msg.field.add(name="profiles", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                  type_name=f".{_PACKAGE}.BfPipelineConfig.Profile")
    msg.field.add(name="packet_io_config", number=4, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                  type_name=f".{_PACKAGE}.BfPipelineConfig.PacketIoConfig")
    prof = msg.nested_type.add(name="Profile")
    prof.field.add(name="profile_name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    prof.field.add(name="context", number=2, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    prof.field.add(name="binary", number=3, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    # proto3 packs repeated scalars by default, as Stratum's reader expects
    prof.field.add(name="pipe_scope", number=4, type=F.TYPE_UINT32, label=F.LABEL_REPEATED)
    pio = msg.nested_type.add(name="PacketIoConfig")
    pio.field.add(name="ports", number=1, type=F.TYPE_UINT32, label=F.LABEL_REPEATED)
    pio.field.add(name="nb_rxqs", number=2, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL)
    pio.field.add(name="nb_txqs", number=3, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL)
    _POOL.Add(fdp)
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.BfPipelineConfig"))


BfPipelineConfig = _declare()


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """One Profile: a compiled pipeline and the pipes it runs on."""

    name: str
    context: bytes  # <pipeline>/context.json
    binary: bytes  # tofino.bin / tofino2.bin, or P4-DPDK's .spec text
    pipe_scope: tuple[int, ...] = ALL_PIPES


def pack(p4_name: str, bfruntime_info: bytes, pipelines: list[Pipeline]) -> bytes:
    """The serialized BfPipelineConfig. packet_io_config stays unset: p4nsm uses packet I/O only
    where the target has it, and P4-DPDK, the one server that reads the field, has none."""
    cfg = BfPipelineConfig(p4_name=p4_name, bfruntime_info=bfruntime_info)
    for p in pipelines:
        cfg.profiles.add(profile_name=p.name, context=p.context, binary=p.binary, pipe_scope=list(p.pipe_scope))
    return cfg.SerializeToString()
