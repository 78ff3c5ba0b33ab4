"""Topology files: switches, the links between them and the hosts on their edge ports.

A file is checked whole before anything starts; every problem is reported with the file, the
line and the field it concerns, e.g. ``topologies/bad.yaml:12: links[3].b: switch 's9' is not declared``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import networkx as nx
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyInterface,
    PlainSerializer,
    PrivateAttr,
    StrictInt,
    ValidationError,
    model_validator,
)

from controller.targets.kinds import Target
from controller.targets.profiles import DEFAULT_CPU_PORT, PROFILES

IFNAME_MAX = 15  # IFNAMSIZ minus the trailing NUL
HOST_IFNAME_SUFFIX = "-eth0"
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

Loc = tuple[str | int, ...]


class Endpoint(NamedTuple):
    switch: str
    port: int

    def __str__(self) -> str:
        return f"{self.switch}:{self.port}"


def switch_ifname(switch: str, port: int) -> str:
    """The lab's name for a switch's port interface (in the root netns)."""
    return f"{switch}-eth{port}"


def host_ifname(host: str) -> str:
    """The lab's name for a host's fabric-facing interface (in the host's netns)."""
    return f"{host}{HOST_IFNAME_SUFFIX}"


def _check_name(value: str) -> str:
    # Names become netns names and interface-name prefixes, so '-', '/' and spaces are out.
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid name: use a letter, then letters, digits or '_'")
    return value


def _parse_endpoint(value: Any) -> Any:
    if isinstance(value, str):
        switch, sep, port = value.rpartition(":")
        if sep and switch and port.isdigit():
            return Endpoint(switch, int(port))
    if isinstance(value, Endpoint):
        return value
    raise ValueError(f"{value!r} is not 'switch:port' (e.g. 's1:2')")


def _parse_mac(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads unquoted 12:34:56:... as a base-60 integer.
        raise ValueError("write the MAC in quotes: unquoted, YAML reads it as a number")
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value.lower()):
        raise ValueError(f"{value!r} is not a MAC address like '02:00:00:00:00:01'")
    mac = value.lower()
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{mac} is a multicast address; a host needs a unicast MAC")
    return mac


def _check_grpc_addr(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not 'host:port' (e.g. '127.0.0.1:50001')")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
EndpointField = Annotated[Endpoint, BeforeValidator(_parse_endpoint), PlainSerializer(str, return_type=str)]
Mac = Annotated[str, BeforeValidator(_parse_mac)]
GrpcAddr = Annotated[str, AfterValidator(_check_grpc_addr)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Switch(_Model):
    name: Name
    device_id: StrictInt = Field(ge=0, lt=2**64)
    grpc_addr: GrpcAddr
    target: Target = Target.SOFTSWITCH
    # None only on a target without packet I/O, which has no CPU port
    cpu_port: Annotated[StrictInt, Field(ge=0)] | None
    ports: list[StrictInt] = Field(min_length=1)
    # TLS towards the switch's gRPC server (P4Runtime and gNMI): the CA that signed its certificate
    # (a path; relative paths are taken from the working directory), and the name in that
    # certificate when it is not the address's host. Without a CA the client speaks plaintext.
    tls_ca: Path | None = None
    tls_server_name: str | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _target_defaults(cls, data: Any) -> Any:
        # Only kinds with a usual CPU port get a default (Tofino's depends on the chip); a switch
        # of the others without one is reported as missing, except on a kind without packet
        # I/O, which has none. Likewise the device id and the gRPC port of kinds that have a
        # usual one (infrap4d: 1 and 9559). An unknown kind is reported on `target`, so it gets
        # the softswitch's defaults rather than a second problem.
        if not isinstance(data, dict):
            return data
        kind = data.get("target", Target.SOFTSWITCH)
        p = PROFILES[Target(kind)] if isinstance(kind, str) and kind in PROFILES else None
        out = dict(data)
        if "cpu_port" not in out:
            default = p.default_cpu_port if p else DEFAULT_CPU_PORT
            if default is not None or (p is not None and not p.has_packet_io):
                out["cpu_port"] = default
        if p is not None and p.default_device_id is not None:
            out.setdefault("device_id", p.default_device_id)
        addr = out.get("grpc_addr")
        if p is not None and p.default_grpc_port is not None and isinstance(addr, str) and (
                ":" not in addr or addr.endswith("]")):
            out["grpc_addr"] = f"{addr}:{p.default_grpc_port}"
        return out

    @model_validator(mode="after")
    def _server_name_needs_ca(self) -> Switch:
        # A server name is only checked inside TLS: given alone it would silently mean plaintext.
        if self.tls_server_name is not None and self.tls_ca is None:
            raise ValueError("tls_server_name is set but tls_ca is not: the name is checked only over TLS")
        return self

    @property
    def grpc_host(self) -> str:
        return self.grpc_addr.rpartition(":")[0].strip("[]")

    @property
    def grpc_port(self) -> int:
        return int(self.grpc_addr.rpartition(":")[2])

    @property
    def port_max(self) -> int:
        return PROFILES[self.target].port_max


class Link(_Model):
    a: EndpointField
    b: EndpointField


class Host(_Model):
    name: Name
    attach: EndpointField
    addresses: list[IPvAnyInterface] = []
    mac: Mac | None = None


class Problem(NamedTuple):
    loc: Loc
    message: str
    line: int | None = None  # set when the topology came from a file

    @property
    def field(self) -> str:
        return format_loc(self.loc)

    def describe(self) -> str:
        return f"{self.field}: {self.message}" if self.loc else self.message


class TopologyProblems(ValueError):
    """A topology that must not be brought up; `problems` lists each problem and its field."""

    def __init__(self, problems: list[Problem], text: str | None = None) -> None:
        self.problems = problems
        super().__init__(text or "; ".join(p.describe() for p in problems))


class TopologyError(TopologyProblems):
    """Problems of a topology file: each names the file, its line and the field."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        ordered = sorted(problems, key=lambda p: (p.line or 0, p.field))
        super().__init__(ordered, "\n".join(f"{source}:{p.line or 1}: {p.describe()}" for p in ordered))


class Topology(_Model):
    name: str = Field(min_length=1)
    switches: list[Switch] = Field(min_length=1)
    links: list[Link] = []
    hosts: list[Host] = []

    _switches: dict[str, Switch] = PrivateAttr(default_factory=dict)
    _hosts: dict[str, Host] = PrivateAttr(default_factory=dict)
    _peers: dict[Endpoint, Endpoint] = PrivateAttr(default_factory=dict)
    _host_at: dict[Endpoint, str] = PrivateAttr(default_factory=dict)
    _macs: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        problems = _find_problems(self)
        if problems:
            raise TopologyProblems(problems)
        self._switches = {s.name: s for s in self.switches}
        self._hosts = {h.name: h for h in self.hosts}
        for link in self.links:
            self._peers[link.a] = link.b
            self._peers[link.b] = link.a
        self._host_at = {h.attach: h.name for h in self.hosts}
        self._macs = _effective_macs(self.hosts)
        return self

    def with_tls(self, ca: Path) -> Topology:
        """This topology with every switch reached over TLS with `ca`, its certificate checked
        for the switch's name: how a lab's switches, whose certificates the lab made, are reached."""
        switches = [s.model_copy(update={"tls_ca": ca, "tls_server_name": s.name}).model_dump() for s in self.switches]
        return Topology.model_validate({**self.model_dump(), "switches": switches})

    def switch(self, name: str) -> Switch:
        try:
            return self._switches[name]
        except KeyError:
            raise KeyError(f"topology {self.name}: no switch {name!r}") from None

    def host(self, name: str) -> Host:
        try:
            return self._hosts[name]
        except KeyError:
            raise KeyError(f"topology {self.name}: no host {name!r}") from None

    def fabric_ports(self, switch: str) -> list[int]:
        """Ports of `switch` that are linked to another switch."""
        return [p for p in self.switch(switch).ports if Endpoint(switch, p) in self._peers]

    def edge_ports(self, switch: str) -> list[int]:
        """Ports of `switch` that a host is attached to."""
        return [p for p in self.switch(switch).ports if Endpoint(switch, p) in self._host_at]

    def host_port(self, host: str) -> Endpoint:
        return self.host(host).attach

    def host_at(self, switch: str, port: int) -> str | None:
        return self._host_at.get(Endpoint(switch, port))

    def peer(self, switch: str, port: int) -> Endpoint | None:
        """The switch port at the other end of a fabric link, None for edge or unused ports."""
        return self._peers.get(Endpoint(switch, port))

    def host_mac(self, host: str) -> str:
        """The declared MAC, or a deterministic locally administered one."""
        self.host(host)
        return self._macs[host]

    def graph(self) -> nx.MultiGraph:
        """Switches and hosts as nodes (attribute `kind`); each link or attachment is an edge
        whose attribute `ports` maps each switch at its ends to its port."""
        graph = nx.MultiGraph(name=self.name)
        for s in self.switches:
            graph.add_node(s.name, kind="switch", device_id=s.device_id)
        for h in self.hosts:
            graph.add_node(h.name, kind="host")
        for link in self.links:
            graph.add_edge(link.a.switch, link.b.switch, ports={link.a.switch: link.a.port, link.b.switch: link.b.port})
        for h in self.hosts:
            graph.add_edge(h.name, h.attach.switch, ports={h.attach.switch: h.attach.port})
        return graph


def _effective_macs(hosts: list[Host]) -> dict[str, str]:
    return {h.name: h.mac or f"02:00:00:00:{(i + 1) >> 8 & 0xFF:02x}:{(i + 1) & 0xFF:02x}" for i, h in enumerate(hosts)}


class _FirstSeen:
    """Remembers where each value was first used, to name it when it comes again."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.seen: dict[Any, Loc] = {}

    def check(self, key: Any, loc: Loc, shown: object, out: list[Problem]) -> None:
        first = self.seen.setdefault(key, loc)
        if first != loc:
            out.append(Problem(loc, f"{self.what} {shown} is already used by {format_loc(first)}"))


def _find_problems(topo: Topology) -> list[Problem]:
    out: list[Problem] = []
    switches: dict[str, Switch] = {}
    node_names, device_ids, grpc_addrs = _FirstSeen("name"), _FirstSeen("device_id"), _FirstSeen("grpc_addr")
    for i, s in enumerate(topo.switches):
        switches.setdefault(s.name, s)
        node_names.check(s.name, ("switches", i, "name"), repr(s.name), out)
        device_ids.check(s.device_id, ("switches", i, "device_id"), s.device_id, out)
        grpc_addrs.check((s.grpc_host, s.grpc_port), ("switches", i, "grpc_addr"), s.grpc_addr, out)
        _check_switch_for_target(s, ("switches", i), out)

    ports_used = _FirstSeen("port")
    for i, link in enumerate(topo.links):
        for end in ("a", "b"):
            ep: Endpoint = getattr(link, end)
            if _check_endpoint(ep, switches, ("links", i, end), out):
                ports_used.check(ep, ("links", i, end), str(ep), out)
        if link.a.switch == link.b.switch:
            out.append(Problem(("links", i), f"link connects {link.a.switch} to itself"))

    addresses, macs = _FirstSeen("address"), _FirstSeen("mac")
    effective_macs = _effective_macs(topo.hosts)
    for i, h in enumerate(topo.hosts):
        node_names.check(h.name, ("hosts", i, "name"), repr(h.name), out)
        if len(host_ifname(h.name)) > IFNAME_MAX:
            out.append(Problem(("hosts", i, "name"), f"interface name {host_ifname(h.name)!r} is longer than "
                                                     f"{IFNAME_MAX} characters; shorten the host name"))
        if _check_endpoint(h.attach, switches, ("hosts", i, "attach"), out):
            ports_used.check(h.attach, ("hosts", i, "attach"), str(h.attach), out)
        for j, addr in enumerate(h.addresses):
            addresses.check(addr.ip, ("hosts", i, "addresses", j), str(addr.ip), out)
        macs.check(effective_macs[h.name], ("hosts", i, "mac") if h.mac else ("hosts", i), effective_macs[h.name], out)
    return out


def _check_switch_for_target(s: Switch, loc: Loc, out: list[Problem]) -> None:
    p = PROFILES[s.target]
    if s.device_id < p.min_device_id:
        out.append(Problem((*loc, "device_id"), f"a {s.target} switch refuses device_id {s.device_id}: "
                                                f"use {p.min_device_id} or more"))
    if s.cpu_port is None:
        if p.has_packet_io:
            out.append(Problem((*loc, "cpu_port"), "required field is missing"))
    elif not p.has_packet_io:
        out.append(Problem((*loc, "cpu_port"), f"a {s.target} switch has no packet I/O and so no CPU port: leave it out"))
    elif s.cpu_port > s.port_max:
        out.append(Problem((*loc, "cpu_port"), f"{s.cpu_port} is above {s.port_max}, the largest port of a {s.target} switch"))
    seen = _FirstSeen("port")
    for j, port in enumerate(s.ports):
        ploc = (*loc, "ports", j)
        seen.check(port, ploc, port, out)
        if port < 0 or port > s.port_max:
            out.append(Problem(ploc, f"port {port} is outside 0..{s.port_max} for a {s.target} switch"))
        elif port == s.cpu_port:
            out.append(Problem(ploc, f"port {port} is the switch's cpu_port"))
        elif len(switch_ifname(s.name, port)) > IFNAME_MAX:
            out.append(Problem(ploc, f"interface name {switch_ifname(s.name, port)!r} is longer than "
                                     f"{IFNAME_MAX} characters; shorten the switch name"))


def _check_endpoint(ep: Endpoint, switches: dict[str, Switch], loc: Loc, out: list[Problem]) -> bool:
    switch = switches.get(ep.switch)
    if switch is None:
        out.append(Problem(loc, f"switch {ep.switch!r} is not declared"))
        return False
    if ep.port not in switch.ports:
        out.append(Problem(loc, f"port {ep.port} is not among {ep.switch}'s ports {switch.ports}"))
        return False
    return True


def format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read and check a topology file; raises TopologyError naming file, line and field."""
    path = Path(path)
    return parse_topology(path.read_text(), source=str(path), default_name=path.stem)


def parse_topology(text: str, source: str = "<topology>", default_name: str = "topology") -> Topology:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise TopologyError(source, [Problem((), f"YAML: {exc.problem or exc}", mark.line + 1 if mark else 1)]) from None
    finally:
        loader.dispose()
    if root is None or not isinstance(data, dict):  # an empty document has no root node and no data
        raise TopologyError(source, [Problem((), "expected a mapping with switches, links and hosts", 1)])
    lines: dict[Loc, int] = {}
    problems = _map_lines(root, (), lines)
    data.setdefault("name", default_name)
    try:
        topology = Topology.model_validate(data)
    except ValidationError as exc:
        problems += [_with_line(p, lines) for p in _problems_of(exc)]
    if problems:
        raise TopologyError(source, problems)
    return topology


def _problems_of(exc: ValidationError) -> list[Problem]:
    found: list[Problem] = []
    for err in exc.errors(include_url=False):
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, TopologyProblems):
            found += cause.problems
            continue
        # Pydantic adds validator names such as 'function-after[...]' to locations; the file has no such fields.
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or ("[" not in p and "-" not in p))
        message = str(cause) if err["type"] == "value_error" and cause else err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "required field is missing"
        found.append(Problem(loc, message))
    return found


def _with_line(problem: Problem, lines: dict[Loc, int]) -> Problem:
    loc = problem.loc
    while loc and loc not in lines:  # a missing field: the line of the item that lacks it
        loc = loc[:-1]
    return problem._replace(line=lines.get(loc, 1))


def _map_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> list[Problem]:
    """Record the line of every mapping key and sequence item; report duplicate keys, which YAML
    would otherwise silently resolve to the last one."""
    lines.setdefault(loc, node.start_mark.line + 1)
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            key_loc = (*loc, key)
            if key_loc in lines:
                problems.append(Problem(key_loc, f"duplicate key (first on line {lines[key_loc]})",
                                        key_node.start_mark.line + 1))
                continue
            lines[key_loc] = key_node.start_mark.line + 1
            problems += _map_lines(value_node, key_loc, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _map_lines(item, (*loc, i), lines)
    return problems


__all__ = [
    "DEFAULT_CPU_PORT",
    "Endpoint",
    "Host",
    "Link",
    "Problem",
    "Switch",
    "Target",
    "Topology",
    "TopologyError",
    "TopologyProblems",
    "host_ifname",
    "load_topology",
    "parse_topology",
    "switch_ifname",
]
