"""The generated NSM modules match the wire contract (docs/nsm_contract.md §1–§3).

Names, numbers and paths are spelled out here on purpose instead of being read back from the
protos: the point is to catch a proto edit that silently breaks compatibility with Go peers.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from google.protobuf import any_pb2, descriptor_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from nsm_api import (
    connection_pb2,
    connection_pb2_grpc,
    connectioncontext_pb2,
    ipam_pb2,
    ipam_pb2_grpc,
    networkservice_pb2,
    networkservice_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from nsm_api.generate import stale_files

NS_GO_PACKAGE = "github.com/networkservicemesh/api/pkg/api/networkservice"
PB2_MODULES: list[ModuleType] = [
    connectioncontext_pb2,
    connection_pb2,
    networkservice_pb2,
    registry_pb2,
    ipam_pb2,
]


def test_generated_code_is_fresh() -> None:
    assert stale_files() == [], "run `python -m nsm_api.generate`"


# --- §2: files, packages, imports ---------------------------------------------------------------

FILES = {
    # file name: (package, imports, go_package)
    "connectioncontext.proto": ("connectioncontext", [], NS_GO_PACKAGE),
    "connection.proto": (
        "connection",
        ["google/protobuf/timestamp.proto", "connectioncontext.proto"],
        NS_GO_PACKAGE,
    ),
    "networkservice.proto": (
        "networkservice",
        ["connection.proto", "google/protobuf/empty.proto"],
        NS_GO_PACKAGE,
    ),
    "registry.proto": (
        "registry",
        ["google/protobuf/empty.proto", "google/protobuf/timestamp.proto"],
        "github.com/networkservicemesh/api/pkg/api/registry",
    ),
    "ipam.proto": ("ipam", [], "github.com/networkservicemesh/api/pkg/api/ipam"),
}


@pytest.mark.parametrize("module", PB2_MODULES, ids=lambda m: m.__name__)
def test_file_layout(module: ModuleType) -> None:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    package, imports, go_package = FILES[proto.name]
    assert proto.syntax == "proto3"
    assert proto.package == package
    assert list(proto.dependency) == imports
    assert proto.options.go_package == go_package


# --- §1: RPC method paths and streaming kinds ----------------------------------------------------

METHODS = {
    # path: (kind, request type, response type)
    "/networkservice.NetworkService/Request": (
        "unary_unary",
        "networkservice.NetworkServiceRequest",
        "connection.Connection",
    ),
    "/networkservice.NetworkService/Close": (
        "unary_unary",
        "connection.Connection",
        "google.protobuf.Empty",
    ),
    "/connection.MonitorConnection/MonitorConnections": (
        "unary_stream",
        "connection.MonitorScopeSelector",
        "connection.ConnectionEvent",
    ),
    "/registry.NetworkServiceRegistry/Register": (
        "unary_unary",
        "registry.NetworkService",
        "registry.NetworkService",
    ),
    "/registry.NetworkServiceRegistry/Find": (
        "unary_stream",
        "registry.NetworkServiceQuery",
        "registry.NetworkServiceResponse",
    ),
    "/registry.NetworkServiceRegistry/Unregister": (
        "unary_unary",
        "registry.NetworkService",
        "google.protobuf.Empty",
    ),
    "/registry.NetworkServiceEndpointRegistry/Register": (
        "unary_unary",
        "registry.NetworkServiceEndpoint",
        "registry.NetworkServiceEndpoint",
    ),
    "/registry.NetworkServiceEndpointRegistry/Find": (
        "unary_stream",
        "registry.NetworkServiceEndpointQuery",
        "registry.NetworkServiceEndpointResponse",
    ),
    "/registry.NetworkServiceEndpointRegistry/Unregister": (
        "unary_unary",
        "registry.NetworkServiceEndpoint",
        "google.protobuf.Empty",
    ),
    "/ipam.IPAM/ManagePrefixes": ("stream_stream", "ipam.PrefixRequest", "ipam.PrefixResponse"),
}


def _kind(client_streaming: bool, server_streaming: bool) -> str:
    def side(streaming: bool) -> str:
        return "stream" if streaming else "unary"

    return f"{side(client_streaming)}_{side(server_streaming)}"


def test_descriptor_methods() -> None:
    found = {
        f"/{service.full_name}/{method.name}": (
            _kind(method.client_streaming, method.server_streaming),
            method.input_type.full_name,
            method.output_type.full_name,
        )
        for module in PB2_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert found == METHODS


class _RecordingChannel:
    """Stands in for grpc.Channel and records what the generated stubs register."""

    def __init__(self) -> None:
        self.methods: dict[str, str] = {}

    def __getattr__(self, kind: str) -> Any:
        def register(path: str, **_: Any) -> None:
            self.methods[path] = kind

        return register


def test_stubs_use_contract_paths() -> None:
    # The *_grpc modules carry their own copies of the paths; check those, not just descriptors.
    channel = _RecordingChannel()
    networkservice_pb2_grpc.NetworkServiceStub(channel)
    connection_pb2_grpc.MonitorConnectionStub(channel)
    registry_pb2_grpc.NetworkServiceRegistryStub(channel)
    registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
    ipam_pb2_grpc.IPAMStub(channel)
    assert channel.methods == {path: kind for path, (kind, _, _) in METHODS.items()}


# --- §3: messages, field numbers and types -------------------------------------------------------

MESSAGES: dict[str, list[tuple[int, str, str]]] = {
    "connectioncontext.IpNeighbor": [(1, "ip", "string"), (2, "hardware_address", "string")],
    "connectioncontext.Route": [(1, "prefix", "string"), (2, "nextHop", "string")],
    "connectioncontext.IpFamily": [(1, "family", "connectioncontext.IpFamily.Family")],
    "connectioncontext.ExtraPrefixRequest": [
        (1, "addr_family", "connectioncontext.IpFamily"),
        (2, "prefix_len", "uint32"),
        (3, "required_number", "uint32"),
        (4, "requested_number", "uint32"),
    ],
    "connectioncontext.PolicyRoute": [
        (1, "from", "string"),
        (2, "proto", "string"),
        (3, "dst_port", "string"),
        (4, "src_port", "string"),
        (5, "routes", "rep connectioncontext.Route"),
    ],
    "connectioncontext.IPContext": [
        (1, "src_ip_addrs", "rep string"),
        (2, "dst_ip_addrs", "rep string"),
        (3, "src_ip_required", "bool"),
        (4, "dst_ip_required", "bool"),
        (5, "src_routes", "rep connectioncontext.Route"),
        (6, "dst_routes", "rep connectioncontext.Route"),
        (7, "excluded_prefixes", "rep string"),
        (8, "ip_neighbors", "rep connectioncontext.IpNeighbor"),
        (9, "extra_prefix_request", "rep connectioncontext.ExtraPrefixRequest"),
        (10, "extra_prefixes", "rep string"),
        (11, "policies", "rep connectioncontext.PolicyRoute"),
    ],
    "connectioncontext.DNSConfig": [
        (1, "dns_server_ips", "rep string"),
        (2, "search_domains", "rep string"),
    ],
    "connectioncontext.DNSContext": [(1, "configs", "rep connectioncontext.DNSConfig")],
    "connectioncontext.EthernetContext": [
        (1, "src_mac", "string"),
        (2, "dst_mac", "string"),
        (3, "vlan_tag", "int32"),
    ],
    "connectioncontext.ConnectionContext": [
        (1, "ip_context", "connectioncontext.IPContext"),
        (2, "dns_context", "connectioncontext.DNSContext"),
        (3, "ethernet_context", "connectioncontext.EthernetContext"),
        (4, "extra_context", "map<string,string>"),
        (5, "MTU", "uint32"),
    ],
    "connection.Mechanism": [
        (1, "cls", "string"),
        (2, "type", "string"),
        (3, "parameters", "map<string,string>"),
    ],
    "connection.PathSegment": [
        (1, "name", "string"),
        (2, "id", "string"),
        (3, "token", "string"),
        (4, "expires", "google.protobuf.Timestamp"),
        (5, "metrics", "map<string,string>"),
    ],
    "connection.Path": [(1, "index", "uint32"), (2, "path_segments", "rep connection.PathSegment")],
    "connection.Connection": [
        (1, "id", "string"),
        (2, "network_service", "string"),
        (3, "mechanism", "connection.Mechanism"),
        (4, "context", "connectioncontext.ConnectionContext"),
        (5, "labels", "map<string,string>"),
        (6, "path", "connection.Path"),
        (7, "network_service_endpoint_name", "string"),
        (8, "payload", "string"),
        (9, "state", "connection.State"),
    ],
    "connection.ConnectionEvent": [
        (1, "type", "connection.ConnectionEventType"),
        (2, "connections", "map<string,connection.Connection>"),
    ],
    "connection.MonitorScopeSelector": [
        (1, "path_segments", "rep connection.PathSegment"),
        (2, "network_services", "rep string"),
    ],
    "networkservice.NetworkServiceRequest": [
        (1, "connection", "connection.Connection"),
        (2, "mechanism_preferences", "rep connection.Mechanism"),
    ],
    "registry.NetworkService": [
        (1, "name", "string"),
        (2, "payload", "string"),
        (3, "matches", "rep registry.Match"),
        (4, "path_ids", "rep string"),
    ],
    "registry.Match": [
        (1, "source_selector", "map<string,string>"),
        (2, "routes", "rep registry.Destination"),
        (3, "fallthrough", "bool"),
        (4, "metadata", "registry.Metadata"),
    ],
    "registry.Metadata": [(1, "labels", "map<string,string>")],
    "registry.Destination": [
        (1, "destination_selector", "map<string,string>"),
        (2, "weight", "uint32"),
    ],
    "registry.NetworkServiceLabels": [(1, "labels", "map<string,string>")],
    "registry.NetworkServiceEndpoint": [
        (1, "name", "string"),
        (2, "network_service_names", "rep string"),
        (3, "network_service_labels", "map<string,registry.NetworkServiceLabels>"),
        (4, "url", "string"),
        (5, "expiration_time", "google.protobuf.Timestamp"),
        (6, "initial_registration_time", "google.protobuf.Timestamp"),
        (7, "path_ids", "rep string"),
    ],
    "registry.NetworkServiceQuery": [
        (1, "network_service", "registry.NetworkService"),
        (2, "watch", "bool"),
    ],
    "registry.NetworkServiceEndpointQuery": [
        (1, "network_service_endpoint", "registry.NetworkServiceEndpoint"),
        (2, "watch", "bool"),
    ],
    "registry.NetworkServiceResponse": [
        (1, "network_service", "registry.NetworkService"),
        (2, "deleted", "bool"),
    ],
    "registry.NetworkServiceEndpointResponse": [
        (1, "network_service_endpoint", "registry.NetworkServiceEndpoint"),
        (2, "deleted", "bool"),
    ],
    "ipam.PrefixRequest": [
        (1, "type", "ipam.Type"),
        (2, "prefix", "string"),
        (3, "exclude_prefixes", "rep string"),
    ],
    "ipam.PrefixResponse": [(2, "prefix", "string"), (3, "exclude_prefixes", "rep string")],
}


def _type_name(field: FieldDescriptor) -> str:
    """The spec's notation: `string`, `rep X`, `map<K,V>`, or a fully-qualified type name."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = (_type_name(f) for f in field.message_type.fields)
        return f"map<{key},{value}>"
    if field.message_type is not None:
        base = field.message_type.full_name
    elif field.enum_type is not None:
        base = field.enum_type.full_name
    else:
        base = descriptor_pb2.FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_")
        base = base.lower()
    return f"rep {base}" if field.is_repeated else base


def _all_messages() -> dict[str, Descriptor]:
    def walk(message: Descriptor) -> list[Descriptor]:
        nested = [m for m in message.nested_types if not m.GetOptions().map_entry]
        return [message, *(d for m in nested for d in walk(m))]

    return {
        d.full_name: d
        for module in PB2_MODULES
        for top in module.DESCRIPTOR.message_types_by_name.values()
        for d in walk(top)
    }


def test_every_message_is_in_the_contract() -> None:
    assert sorted(_all_messages()) == sorted(MESSAGES)


@pytest.mark.parametrize("full_name", sorted(MESSAGES))
def test_message_fields(full_name: str) -> None:
    fields = _all_messages()[full_name].fields
    assert [(f.number, f.name, _type_name(f)) for f in fields] == MESSAGES[full_name]


ENUMS = {
    "connection.State": {"UP": 0, "DOWN": 1, "REFRESH_REQUESTED": 2, "RESELECT_REQUESTED": 3},
    "connection.ConnectionEventType": {"INITIAL_STATE_TRANSFER": 0, "UPDATE": 1, "DELETE": 2},
    "connectioncontext.IpFamily.Family": {"IPV4": 0, "IPV6": 1},
    "ipam.Type": {"UNDEFINED": 0, "ALLOCATE": 1, "DELETE": 2},
}


def test_enums() -> None:
    top_level = [e for m in PB2_MODULES for e in m.DESCRIPTOR.enum_types_by_name.values()]
    nested = [e for m in _all_messages().values() for e in m.enum_types]
    found = {e.full_name: {v.name: v.number for v in e.values} for e in [*top_level, *nested]}
    assert found == ENUMS


def test_type_url() -> None:
    packed = any_pb2.Any()
    packed.Pack(connection_pb2.Connection(id="x"))
    assert packed.type_url == "type.googleapis.com/connection.Connection"


# --- wire: field numbers as bytes ----------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    """Hand-encodes one field: an int as a varint (wire type 0), bytes length-delimited (2)."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _entry(key: bytes, value: bytes) -> bytes:
    return _field(1, key) + _field(2, value)


def test_connection_wire_bytes() -> None:
    cc = connectioncontext_pb2
    conn = connection_pb2.Connection(
        id="conn-1",
        network_service="ns",
        mechanism=connection_pb2.Mechanism(
            cls="LOCAL", type="KERNEL", parameters={"name": "nsm-1"}
        ),
        context=cc.ConnectionContext(
            ip_context=cc.IPContext(
                src_ip_addrs=["10.0.0.1/32"],
                src_routes=[cc.Route(prefix="10.0.0.2/32", nextHop="10.0.0.2")],
            ),
            MTU=1500,
        ),
        labels={"app": "x"},
        path=connection_pb2.Path(
            index=1,
            path_segments=[
                connection_pb2.PathSegment(
                    name="nsc", id="seg-1", expires=timestamp_pb2.Timestamp(seconds=100)
                )
            ],
        ),
        network_service_endpoint_name="nse",
        payload="IP",
        state=connection_pb2.DOWN,
    )
    expected = b"".join(
        [
            _field(1, b"conn-1"),
            _field(2, b"ns"),
            _field(
                3,
                _field(1, b"LOCAL") + _field(2, b"KERNEL") + _field(3, _entry(b"name", b"nsm-1")),
            ),
            _field(
                4,
                _field(
                    1,
                    _field(1, b"10.0.0.1/32")
                    + _field(5, _field(1, b"10.0.0.2/32") + _field(2, b"10.0.0.2")),
                )
                + _field(5, 1500),
            ),
            _field(5, _entry(b"app", b"x")),
            _field(
                6,
                _field(1, 1)
                + _field(2, _field(1, b"nsc") + _field(2, b"seg-1") + _field(4, _field(1, 100))),
            ),
            _field(7, b"nse"),
            _field(8, b"IP"),
            _field(9, 1),
        ]
    )
    wire = conn.SerializeToString(deterministic=True)
    assert wire[:2] == b"\x0a\x06"  # field 1 (id), length-delimited, 6 bytes
    assert b"\x28\xdc\x0b" in wire  # ConnectionContext field 5 (MTU) = 1500
    assert wire[-2:] == b"\x48\x01"  # field 9 (state) = DOWN
    assert wire == expected
    assert connection_pb2.Connection.FromString(wire) == conn


def test_prefix_response_has_no_field_one() -> None:
    wire = ipam_pb2.PrefixResponse(prefix="10.0.0.0/24").SerializeToString()
    assert wire == _field(2, b"10.0.0.0/24")
