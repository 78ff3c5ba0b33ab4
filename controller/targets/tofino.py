"""Stratum's BfPipelineConfig for Tofino, built from bf-p4c's output directory.

Stratum (stratum_bfrt) expects p4_device_config to be a serialized
`stratum.hal.barefoot.BfPipelineConfig`:
    string p4_name = 1; bytes bfruntime_info = 2; repeated Profile profiles = 3;
    Profile { string profile_name = 1; repeated int32 pipe_scope = 2; bytes binary = 3; bytes context = 4; }
finsy does not ship that proto, so the message is declared here from its field numbers.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_POOL = descriptor_pool.DescriptorPool()


def _build() -> type:
    fdp = descriptor_pb2.FileDescriptorProto(name="p4nsm_bf_pipeline.proto", package="stratum.hal.barefoot", syntax="proto3")
    msg = fdp.message_type.add(name="BfPipelineConfig")
    F = descriptor_pb2.FieldDescriptorProto
    msg.field.add(name="p4_name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    msg.field.add(name="bfruntime_info", number=2, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    msg.field.add(name="profiles", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                  type_name=".stratum.hal.barefoot.BfPipelineConfig.Profile")
    prof = msg.nested_type.add(name="Profile")
    prof.field.add(name="profile_name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    prof.field.add(name="pipe_scope", number=2, type=F.TYPE_INT32, label=F.LABEL_REPEATED)
    prof.field.add(name="binary", number=3, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    prof.field.add(name="context", number=4, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    _POOL.Add(fdp)
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName("stratum.hal.barefoot.BfPipelineConfig"))


BfPipelineConfig = _build()


def bf_pipeline_config(out_dir: Path, p4_name: str = "nsm_fabric_tna", profile: str = "pipe") -> bytes:
    """Pack bf-p4c's `bfrt.json`, `<profile>/tofino.bin` and `<profile>/context.json`."""
    need = {"bfrt.json": out_dir / "bfrt.json", "tofino.bin": out_dir / profile / "tofino.bin",
            "context.json": out_dir / profile / "context.json"}
    missing = [str(p) for p in need.values() if not p.exists()]
    if missing:
        from controller.targets import TargetError

        raise TargetError(f"bf-p4c output incomplete, missing: {', '.join(missing)} (compile p4/nsm_fabric_tna.p4 with bf-p4c)")
    cfg = BfPipelineConfig(p4_name=p4_name, bfruntime_info=need["bfrt.json"].read_bytes())
    cfg.profiles.add(profile_name=profile, pipe_scope=[0, 1, 2, 3], binary=need["tofino.bin"].read_bytes(),
                     context=need["context.json"].read_bytes())
    return cfg.SerializeToString()
