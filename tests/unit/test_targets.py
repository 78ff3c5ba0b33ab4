"""Target profiles: each kind's flags and device config, as the topology and the controller use them."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from finsy.proto import p4i
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from pydantic import ValidationError

from controller.p4rt.schema import P4Schema
from controller.runtime import Controller
from controller.settings import REPO_ROOT, Settings
from controller.targets import PROFILES, TargetError, device_config, profile
from controller.topology import Target, Topology

PNA_P4INFO = REPO_ROOT / "p4" / "nsm_fabric_pna.p4info.txtpb"


def test_every_target_kind_has_a_profile() -> None:
    assert set(PROFILES) == set(Target)
    assert all(p.kind is kind for kind, p in PROFILES.items())


@pytest.mark.parametrize(
    ("kind", "watch_ports", "group_read_back", "port_max", "cpu_port", "packet_io", "tls", "port_bits"),
    [
        ("softswitch", True, True, 511, 255, True, False, 9),
        # BMv2 fails over on watch ports but reads every member back with the last one's port.
        ("bmv2", True, False, 511, 255, True, False, 9),
        # Stratum refuses watch ports; its read-back is not relied on. Without port translation
        # (its default) ports are the SDK's 9-bit dev ports in a 32-bit P4Info field; its CPU
        # port depends on the chip.
        ("tofino", False, False, 511, None, True, False, 32),
        # infrap4d: PNA's 32-bit ports passed through, no packet I/O, TLS by default.
        ("dpdk", False, False, 2**32 - 1, None, False, True, 32),
    ],
)
def test_profile_flags(kind: str, watch_ports: bool, group_read_back: bool, port_max: int, cpu_port: int | None,
                       packet_io: bool, tls: bool, port_bits: int) -> None:
    p = profile(kind)
    assert p is profile(Target(kind))
    assert (p.honours_watch_ports, p.group_read_back_reliable) == (watch_ports, group_read_back)
    assert (p.port_max, p.default_cpu_port) == (port_max, cpu_port)
    assert (p.has_packet_io, p.needs_tls, p.p4info_port_bits) == (packet_io, tls, port_bits)


def _switch(kind: str, **fields: object) -> dict[str, object]:
    # a one-letter name: "s-eth<largest port>" just fits an interface name
    return {"name": "s", "device_id": 1, "grpc_addr": "127.0.0.1:50001", "target": kind, "ports": [1], **fields}


def _topo(*switches: dict[str, object]) -> Topology:
    return Topology.model_validate({"name": "t", "switches": list(switches)})


@pytest.mark.parametrize("kind", ["softswitch", "bmv2", "tofino", "dpdk"])
def test_topology_takes_port_range_and_cpu_port_from_the_profile(kind: str) -> None:
    p = profile(kind)
    cpu = {"cpu_port": 0} if p.default_cpu_port is None and p.has_packet_io else {}
    switch = _topo(_switch(kind, ports=[1, p.port_max], **cpu)).switch("s")
    assert switch.port_max == p.port_max
    assert switch.cpu_port == (p.default_cpu_port if p.default_cpu_port is not None or not p.has_packet_io else 0)
    with pytest.raises(ValidationError, match=rf"port {p.port_max + 1} is outside 0..{p.port_max} for a {kind} switch"):
        _topo(_switch(kind, ports=[p.port_max + 1], **cpu))


def test_dpdk_switch_defaults_port_9559_device_id_1_and_no_cpu_port() -> None:
    switch = _topo({"name": "d", "target": "dpdk", "grpc_addr": "10.0.0.5", "ports": [0, 1]}).switch("d")
    assert (switch.grpc_addr, switch.device_id, switch.cpu_port) == ("10.0.0.5:9559", 1, None)
    # what is given stays
    switch = _topo({"name": "d", "target": "dpdk", "grpc_addr": "[::1]", "device_id": 7, "ports": [0]}).switch("d")
    assert (switch.grpc_addr, switch.device_id) == ("[::1]:9559", 7)
    # only kinds with a usual port get it: a softswitch without one is refused as before
    with pytest.raises(ValidationError, match="is not 'host:port'"):
        _topo({"name": "s", "device_id": 1, "grpc_addr": "10.0.0.5", "ports": [1]})


def test_dpdk_switch_with_a_cpu_port_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"switches\[0\]\.cpu_port: a dpdk switch has no packet I/O and so no CPU port"):
        _topo(_switch("dpdk", cpu_port=3))


@pytest.mark.parametrize("kind", ["tofino", "dpdk"])
def test_stratum_targets_refuse_device_id_0(kind: str) -> None:
    with pytest.raises(ValidationError, match=rf"switches\[0\]\.device_id: a {kind} switch refuses device_id 0: use 1 or more"):
        _topo(_switch(kind, device_id=0, cpu_port=192))
    _topo(_switch("bmv2", device_id=0))  # BMv2 takes 0


def test_tofino_still_needs_its_cpu_port() -> None:
    with pytest.raises(ValidationError, match=r"cpu_port"):
        _topo(_switch("tofino"))
    with pytest.raises(ValidationError, match=r"cpu_port: required field is missing"):
        _topo(_switch("tofino", cpu_port=None))


def test_election_id_default_is_not_0() -> None:
    # Stratum and infrap4d refuse election id 0
    assert Settings().election_id >= 1


def test_profiles_are_frozen() -> None:
    with pytest.raises(AttributeError):
        profile("bmv2").honours_watch_ports = False  # type: ignore[misc]


@pytest.mark.parametrize("kind", ["p4rt", "BMv2", ""])
def test_unknown_kind_names_the_known_ones(kind: str) -> None:
    with pytest.raises(TargetError, match=rf"unknown target kind {kind!r}: known kinds are softswitch, bmv2, tofino, dpdk$"):
        profile(kind)
    with pytest.raises(TargetError, match="unknown target kind"):
        device_config(kind, Settings())


BMV2_JSON = b'{"header_types": [], "pipelines": [], "program": "nsm_fabric.p4"}'
BFRT_JSON = b'{"schema_version": "1.0.0", "tables": []}'
CONTEXT_JSON = b'{"program_name": "nsm_fabric", "tables": []}'
SPEC = b"struct metadata_t {\n\tbit<8> from_fabric\n}\napply {\n\ttable fabric_ports\n\ttx m.port\n}\n"


def test_softswitch_and_bmv2_configs_are_the_files(tmp_path: Path) -> None:
    (tmp_path / "soft.json").write_bytes(b'{"soft": 1}')
    (tmp_path / "bmv2.json").write_bytes(BMV2_JSON)
    settings = Settings(softswitch_config_path=tmp_path / "soft.json", bmv2_json_path=tmp_path / "bmv2.json")
    assert device_config("softswitch", settings) == b'{"soft": 1}'
    assert profile(Target.BMV2).device_config(settings) == BMV2_JSON


def test_missing_bmv2_json_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"BMv2 JSON .*missing\.json is missing: build it with `make -C p4 bmv2`"):
        device_config("bmv2", Settings(bmv2_json_path=tmp_path / "missing.json"))


def test_a_bfrt_schema_given_as_bmv2_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bf-rt.json").write_bytes(BFRT_JSON)
    with pytest.raises(TargetError, match=r"bf-rt\.json is not a BMv2 JSON"):
        device_config("bmv2", Settings(bmv2_json_path=tmp_path / "bf-rt.json"))


# --- Stratum's BfPipelineConfig, declared here independently of controller/targets -------------

# stratum/hal/lib/barefoot/bf.proto (Tofino) and the TDI one (P4-DPDK), field by field:
# (message, field, number, type, label)
_F = descriptor_pb2.FieldDescriptorProto
BF_PROTO = [
    ("BfPipelineConfig", "p4_name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL),
    ("BfPipelineConfig", "bfruntime_info", 2, _F.TYPE_BYTES, _F.LABEL_OPTIONAL),
    ("BfPipelineConfig", "profiles", 3, "Profile", _F.LABEL_REPEATED),
    ("BfPipelineConfig", "packet_io_config", 4, "PacketIoConfig", _F.LABEL_OPTIONAL),  # TDI only
    ("Profile", "profile_name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL),
    ("Profile", "context", 2, _F.TYPE_BYTES, _F.LABEL_OPTIONAL),
    ("Profile", "binary", 3, _F.TYPE_BYTES, _F.LABEL_OPTIONAL),
    ("Profile", "pipe_scope", 4, _F.TYPE_UINT32, _F.LABEL_REPEATED),
    ("PacketIoConfig", "ports", 1, _F.TYPE_UINT32, _F.LABEL_REPEATED),
    ("PacketIoConfig", "nb_rxqs", 2, _F.TYPE_UINT32, _F.LABEL_OPTIONAL),
    ("PacketIoConfig", "nb_txqs", 3, _F.TYPE_UINT32, _F.LABEL_OPTIONAL),
]


def _stratum_message() -> Any:
    package = "stratum.hal.tdi"
    fdp = descriptor_pb2.FileDescriptorProto(name="test_stratum_bf.proto", package=package, syntax="proto3")
    messages = {name: fdp.message_type.add(name=name) for name in ("BfPipelineConfig", "Profile", "PacketIoConfig")}
    for message, field, number, kind, label in BF_PROTO:
        if isinstance(kind, str):
            messages[message].field.add(name=field, number=number, type=_F.TYPE_MESSAGE, label=label,
                                        type_name=f".{package}.{kind}")
        else:
            messages[message].field.add(name=field, number=number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.BfPipelineConfig"))


StratumBfPipelineConfig = _stratum_message()


def _decode(data: bytes) -> Any:
    cfg = StratumBfPipelineConfig.FromString(data)
    # nothing this declaration does not know of: every field number was one of Stratum's
    assert not any(len(unknown_fields.UnknownFieldSet(m)) for m in (cfg, *cfg.profiles))
    return cfg


def _fields(data: bytes) -> list[tuple[int, int, bytes]]:
    """(field number, wire type, raw value) at the top of a message: the wire as it is."""
    out, i = [], 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            start = i
            _, i = _varint(data, i)
            out.append((number, wire, data[start:i]))
        elif wire == 2:
            length, i = _varint(data, i)
            out.append((number, wire, data[i:i + length]))
            i += length
        else:
            raise AssertionError(f"wire type {wire} in a BfPipelineConfig")
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = data[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return value, i


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _tofino_dir(root: Path, binary: str = "tofino.bin") -> Path:
    return _write(root, {"bfrt.json": BFRT_JSON, f"pipe/{binary}": b"\x00\x01TOFINO-BIN", "pipe/context.json": CONTEXT_JSON})


def test_tofino_config_is_stratums_bf_pipeline_config_field_by_field(tmp_path: Path) -> None:
    data = device_config("tofino", Settings(tofino_pipeline_dir=_tofino_dir(tmp_path)))
    cfg = _decode(data)
    assert (cfg.p4_name, cfg.bfruntime_info) == ("nsm_fabric_tna", BFRT_JSON)
    assert not cfg.HasField("packet_io_config")  # Tofino's bf.proto has no field 4
    [prof] = cfg.profiles
    assert (prof.profile_name, prof.context, prof.binary, list(prof.pipe_scope)) == (
        "pipe", CONTEXT_JSON, b"\x00\x01TOFINO-BIN", [0, 1, 2, 3])
    # on the wire: fields 1, 2, 3 at the top; in the profile 1..4 with pipe_scope packed
    assert [(n, w) for n, w, _ in _fields(data)] == [(1, 2), (2, 2), (3, 2)]
    profile_fields = _fields(_fields(data)[2][2])
    assert [(n, w) for n, w, _ in profile_fields] == [(1, 2), (2, 2), (3, 2), (4, 2)]
    assert profile_fields[3][2] == bytes([0, 1, 2, 3])


def test_tofino2_binary_is_taken(tmp_path: Path) -> None:
    cfg = _decode(device_config("tofino", Settings(tofino_pipeline_dir=_tofino_dir(tmp_path, "tofino2.bin"))))
    assert cfg.profiles[0].binary == b"\x00\x01TOFINO-BIN"


def test_incomplete_tofino_output_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "bfrt.json").write_bytes(BFRT_JSON)
    with pytest.raises(TargetError, match=r"missing: .*pipe/context\.json, .*pipe/tofino\.bin \(compile p4/nsm_fabric_tna\.p4"):
        device_config("tofino", Settings(tofino_pipeline_dir=tmp_path))
    with pytest.raises(TargetError, match=r"nowhere does not exist: it should be bf-p4c's output directory"):
        device_config("tofino", Settings(tofino_pipeline_dir=tmp_path / "nowhere"))


def test_a_bmv2_json_in_tofino_output_is_refused_naming_it(tmp_path: Path) -> None:
    _tofino_dir(tmp_path)
    (tmp_path / "pipe" / "tofino.bin").write_bytes(BMV2_JSON)
    with pytest.raises(TargetError, match=r"pipe/tofino\.bin is JSON, not a Tofino binary"):
        device_config("tofino", Settings(tofino_pipeline_dir=tmp_path))
    (tmp_path / "bfrt.json").write_bytes(BMV2_JSON)
    with pytest.raises(TargetError, match=r"bfrt\.json is a BMv2 JSON \(p4c --target bmv2\), not a BfRt schema"):
        device_config("tofino", Settings(tofino_pipeline_dir=tmp_path))


def _conf(root: Path, pipelines: list[dict[str, Any]]) -> Path:
    """bf-p4c's .conf, paths relative to it, as bf-p4c writes it."""
    conf = root / "nsm_fabric_tna.conf"
    conf.write_text(json.dumps({"chip_list": [{"chip_family": "tofino", "instance": 0}], "p4_devices": [{
        "device-id": 0, "p4_programs": [{"program-name": "nsm_fabric_tna", "bfrt-config": "bfrt.json",
                                         "p4_pipelines": pipelines}]}]}))
    return conf


def test_tofino_conf_packs_every_pipeline_it_lists_and_wins_over_the_directory(tmp_path: Path) -> None:
    _tofino_dir(tmp_path / "build")
    _write(tmp_path / "build", {"pipe1/context.json": b'{"tables": [1]}', "pipe1/tofino.bin": b"\x02BIN1"})
    conf = _conf(tmp_path / "build", [
        {"p4_pipeline_name": "pipe", "context": "pipe/context.json", "config": "pipe/tofino.bin", "pipe_scope": [0, 2]},
        {"p4_pipeline_name": "pipe1", "context": "pipe1/context.json", "config": "pipe1/tofino.bin", "pipe_scope": [1, 3]},
    ])
    settings = Settings(tofino_conf_path=conf, tofino_pipeline_dir=tmp_path / "not-there")
    cfg = _decode(device_config("tofino", settings))
    assert (cfg.p4_name, cfg.bfruntime_info) == ("nsm_fabric_tna", BFRT_JSON)
    assert [(p.profile_name, p.context, p.binary, list(p.pipe_scope)) for p in cfg.profiles] == [
        ("pipe", CONTEXT_JSON, b"\x00\x01TOFINO-BIN", [0, 2]), ("pipe1", b'{"tables": [1]}', b"\x02BIN1", [1, 3])]


def test_tofino_conf_errors_name_the_conf_and_what_is_wrong(tmp_path: Path) -> None:
    _tofino_dir(tmp_path)
    conf = _conf(tmp_path, [{"p4_pipeline_name": "pipe", "context": "pipe/context.json", "config": "pipe/gone.bin"}])
    with pytest.raises(TargetError, match=r"missing: .*pipe/gone\.bin \(listed in .*nsm_fabric_tna\.conf\)"):
        device_config("tofino", Settings(tofino_conf_path=conf))
    conf = _conf(tmp_path, [{"p4_pipeline_name": "pipe", "config": "pipe/tofino.bin"}])
    with pytest.raises(TargetError, match=r"nsm_fabric_tna\.conf: p4_devices\[0\]\.p4_programs\[0\]\.p4_pipelines\[0\]\.context is missing"):
        device_config("tofino", Settings(tofino_conf_path=conf))
    conf.write_bytes(BMV2_JSON)
    with pytest.raises(TargetError, match=r"nsm_fabric_tna\.conf: p4_devices is missing \(not a bf-p4c \.conf\?\)"):
        device_config("tofino", Settings(tofino_conf_path=conf))
    # without a pipe_scope in the .conf, all four pipes
    conf = _conf(tmp_path, [{"p4_pipeline_name": "pipe", "context": "pipe/context.json", "config": "pipe/tofino.bin"}])
    assert list(_decode(device_config("tofino", Settings(tofino_conf_path=conf))).profiles[0].pipe_scope) == [0, 1, 2, 3]


# --- P4-DPDK -------------------------------------------------------------------------------------

def _dpdk_dir(root: Path) -> Path:
    return _write(root, {"bf-rt.json": BFRT_JSON, "pipe/context.json": CONTEXT_JSON, "pipe/nsm_fabric_pna.spec": SPEC})


def test_dpdk_config_is_the_tdi_bf_pipeline_config_with_the_spec(tmp_path: Path) -> None:
    data = device_config("dpdk", Settings(dpdk_pipeline_dir=_dpdk_dir(tmp_path)))
    cfg = _decode(data)
    assert (cfg.p4_name, cfg.bfruntime_info) == ("nsm_fabric_pna", BFRT_JSON)
    [prof] = cfg.profiles
    assert (prof.profile_name, prof.context, prof.binary, list(prof.pipe_scope)) == ("pipe", CONTEXT_JSON, SPEC, [0, 1, 2, 3])
    assert not cfg.HasField("packet_io_config")  # no packet I/O on P4-DPDK
    assert [n for n, _, _ in _fields(data)] == [1, 2, 3]


@pytest.mark.parametrize("gone", ["bf-rt.json", "pipe/context.json", "pipe/nsm_fabric_pna.spec"])
def test_incomplete_dpdk_output_names_the_file(tmp_path: Path, gone: str) -> None:
    _dpdk_dir(tmp_path)
    (tmp_path / gone).unlink()
    shown = "pipe/<program>.spec" if gone.endswith(".spec") else gone
    with pytest.raises(TargetError, match=rf"missing: .*{re.escape(shown)} \(compile p4/nsm_fabric_pna\.p4 with p4c-dpdk"):
        device_config("dpdk", Settings(dpdk_pipeline_dir=tmp_path))


def test_bmv2_outputs_given_to_a_dpdk_switch_are_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "nsm_fabric.json").write_bytes(BMV2_JSON)
    # the BMv2 JSON itself
    with pytest.raises(TargetError, match=r"nsm_fabric\.json is a file, not p4c-dpdk's output directory"):
        device_config("dpdk", Settings(dpdk_pipeline_dir=tmp_path / "nsm_fabric.json"))
    # p4c's bmv2 build directory
    with pytest.raises(TargetError, match=r"missing: .*bf-rt\.json, .*pipe/context\.json, .*pipe/<program>\.spec"):
        device_config("dpdk", Settings(dpdk_pipeline_dir=tmp_path))
    # a BMv2 JSON in a dpdk layout
    _dpdk_dir(tmp_path / "out")
    (tmp_path / "out" / "bf-rt.json").write_bytes(BMV2_JSON)
    with pytest.raises(TargetError, match=r"out/bf-rt\.json is a BMv2 JSON \(p4c --target bmv2\), not a BfRt schema"):
        device_config("dpdk", Settings(dpdk_pipeline_dir=tmp_path / "out"))


def test_a_spec_that_is_not_one_is_refused(tmp_path: Path) -> None:
    _dpdk_dir(tmp_path)
    spec = tmp_path / "pipe" / "nsm_fabric_pna.spec"
    spec.write_bytes(CONTEXT_JSON)
    with pytest.raises(TargetError, match=r"nsm_fabric_pna\.spec is JSON, not a P4-DPDK \.spec"):
        device_config("dpdk", Settings(dpdk_pipeline_dir=tmp_path))
    spec.write_bytes(b"\x7fELF binary")
    with pytest.raises(TargetError, match=r"nsm_fabric_pna\.spec has no apply block"):
        device_config("dpdk", Settings(dpdk_pipeline_dir=tmp_path))
    spec.write_bytes(SPEC)
    (tmp_path / "pipe" / "other.spec").write_bytes(SPEC)
    with pytest.raises(TargetError, match=r"more than one \.spec \(nsm_fabric_pna\.spec, other\.spec\)"):
        device_config("dpdk", Settings(dpdk_pipeline_dir=tmp_path))


# --- Tofino's packet_out: every field the TNA program declares, padding included -----------------

def _tna_header(name: str) -> list[tuple[str, int]]:
    """The fields of a controller header of p4/nsm_fabric_tna.p4, with the widths bf-p4c's P4Info
    gives them (the translated port type is 32 bits)."""
    source = (REPO_ROOT / "p4" / "nsm_fabric_tna.p4").read_text()
    translated = {name: width for width, name in
                  re.findall(r'@p4runtime_translation\("[^"]+", (\d+)\)\s*type bit<\d+> (\w+);', source)}
    body = re.search(rf'@controller_header\("{name}"\)\s*header \w+ \{{(.*?)\}}', source, re.S)
    assert body is not None and translated
    fields = []
    for kind, field in re.findall(r"(\w+(?:<\d+>)?)\s+(\w+);", body.group(1)):
        width = re.fullmatch(r"bit<(\d+)>", kind)
        fields.append((field, int(width.group(1)) if width else int(translated[kind])))
    return fields


def test_tofino_packet_out_carries_every_field_padding_included() -> None:
    header = _tna_header("packet_out")
    assert header == [("egress_port", 32), ("_pad", 7)]
    info = p4i.P4Info()
    meta = info.controller_packet_metadata.add()
    meta.preamble.name = "packet_out"
    for i, (field, width) in enumerate(header, 1):
        meta.metadata.add(id=i, name=field, bitwidth=width)
    # what SwitchClient.packet_out sends for the link monitor's probe (egress_port only given)
    sent = P4Schema(info).packet_metadata("packet_out", {"egress_port": 260})
    assert [(m.metadata_id, m.value) for m in sent] == [(1, (260).to_bytes(2, "big")), (2, b"\x00")]


# --- the controller ------------------------------------------------------------------------------

def _mixed_fabric(kinds: dict[str, str]) -> Topology:
    names = list(kinds)
    switches = [{"name": n, "device_id": i + 1, "grpc_addr": f"127.0.0.1:{50001 + i}", "target": kinds[n],
                 "ports": [1, 2, 3], **({} if kinds[n] == "dpdk" else {"cpu_port": 255})} for i, n in enumerate(names)]
    a, b, c = names
    return Topology.model_validate({"name": "mixed", "switches": switches,
                                    "links": [{"a": f"{a}:2", "b": f"{b}:2"}, {"a": f"{b}:3", "b": f"{c}:3"},
                                              {"a": f"{c}:2", "b": f"{a}:3"}]})


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    (tmp_path / "bmv2.json").write_bytes(BMV2_JSON)
    return Settings(bmv2_json_path=tmp_path / "bmv2.json", tofino_pipeline_dir=_tofino_dir(tmp_path / "tofino"),
                    dpdk_pipeline_dir=_dpdk_dir(tmp_path / "dpdk"), store_path=tmp_path / "store.sqlite",
                    metrics_address="", web_address="", **overrides)


@pytest.mark.parametrize("fast_failover", [True, False])
def test_controller_takes_capabilities_from_the_profiles(tmp_path: Path, fast_failover: bool) -> None:
    settings = _settings(tmp_path, fast_failover=fast_failover)
    controller = Controller(_mixed_fabric({"soft": "softswitch", "bm": "bmv2", "soft2": "softswitch"}), settings)
    try:
        assert controller.fabric.fast_failover == ({"soft", "bm", "soft2"} if fast_failover else set())
        assert controller.fabric.group_watch_unreliable == {"bm"}
        configs = {name: c.target.device_config for name, c in controller.clients.items()}
        assert configs == {name: device_config(kind, settings)
                           for name, kind in (("soft", "softswitch"), ("bm", "bmv2"), ("soft2", "softswitch"))}
    finally:
        controller.store.close()


def test_links_are_probed_only_between_switches_with_packet_io(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path, p4info_path=PNA_P4INFO)
    with caplog.at_level(logging.WARNING, logger="p4nsm.controller"):
        controller = Controller(_mixed_fabric({"t1": "tofino", "t2": "tofino", "d": "dpdk"}), settings)
    try:
        assert set(controller.links.links) == {"t1:2-t2:2"}
        assert set(controller.links.clients) == {"t1", "t2"}
        assert set(controller.fabric.graph.links) == {"t1:2-t2:2", "d:3-t2:3", "d:2-t1:3"}  # all carry connections
        assert controller.fabric.fast_failover == set()
        assert controller.fabric.group_watch_unreliable == {"t1", "t2", "d"}
        assert _decode(controller.clients["d"].target.device_config).profiles[0].binary == SPEC
        # the missing TLS is said for the dpdk switch only
        tls = [r.getMessage() for r in caplog.records if "event=no_tls" in r.getMessage()]
        assert len(tls) == 1 and tls[0].startswith("switch=d event=no_tls target=dpdk") and "--grpc_open_insecure_mode=true" in tls[0]
    finally:
        controller.store.close()


def test_bad_inputs_are_refused_before_any_rpc(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (tmp_path / "dpdk" / "pipe" / "context.json").unlink()
    # a P4Info of the wrong port width, naming the field
    with pytest.raises(TargetError, match=r"table FabricIngress\.fabric_ports match field 'ingress_port' is 9 bits, but a dpdk switch"):
        Controller(_mixed_fabric({"d": "dpdk", "t1": "tofino", "t2": "tofino"}), settings)
    # build outputs missing, naming the file
    with pytest.raises(TargetError, match=r"missing: .*dpdk/pipe/context\.json"):
        Controller(_mixed_fabric({"t1": "tofino", "t2": "tofino", "d": "dpdk"}),
                   settings.model_copy(update={"p4info_path": PNA_P4INFO}))
    # refused before the store is even opened, so before any client could start
    assert not (tmp_path / "store.sqlite").exists()
