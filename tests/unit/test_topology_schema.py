"""Topology files: the examples load, and bad files are refused with file:line: field: message.

Each bad fixture under data/ marks the problems it must produce with a trailing
``# E: field: message`` comment on the line the loader has to name.
"""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx
import pytest
import yaml
from pydantic import ValidationError

from controller.topology import (
    DEFAULT_CPU_PORT,
    Endpoint,
    Switch,
    Target,
    Topology,
    TopologyError,
    TopologyProblems,
    load_topology,
    parse_topology,
)
from topologies.gen_fattree import fattree_yaml

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"
DATA = Path(__file__).resolve().parent / "data"
EXPECT = re.compile(r"#\s*E:\s*(.+?)\s*$")

EXAMPLES = {
    # name: (switches, links, hosts)
    "line3": (3, 2, 3),
    "diamond": (4, 4, 4),
    "ring6": (6, 6, 6),
    "fattree4": (20, 32, 16),
}


def _expected(path: Path) -> set[tuple[int, str]]:
    found = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = EXPECT.search(line)
        if match:
            found.add((number, match.group(1)))
    return found


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_loads(name: str) -> None:
    topo = load_topology(TOPOLOGIES / f"{name}.yaml")
    assert topo.name == name
    assert (len(topo.switches), len(topo.links), len(topo.hosts)) == EXAMPLES[name]
    assert [s.device_id for s in topo.switches] == list(range(1, len(topo.switches) + 1))
    assert all(s.target is Target.SOFTSWITCH and s.cpu_port == DEFAULT_CPU_PORT for s in topo.switches)
    assert all(s.grpc_host == "127.0.0.1" and 50001 <= s.grpc_port < 50100 for s in topo.switches)
    assert nx.is_connected(topo.graph())


def test_every_example_is_listed() -> None:
    assert {p.stem for p in TOPOLOGIES.glob("*.yaml")} == set(EXAMPLES)


def test_fattree_file_is_the_generator_output() -> None:
    assert (TOPOLOGIES / "fattree4.yaml").read_text() == fattree_yaml(4)


def test_fattree_roles_by_port() -> None:
    topo = load_topology(TOPOLOGIES / "fattree4.yaml")
    for s in topo.switches:
        if s.name.startswith("e"):
            assert (topo.edge_ports(s.name), topo.fabric_ports(s.name)) == ([1, 2], [3, 4])
        else:
            assert (topo.edge_ports(s.name), topo.fabric_ports(s.name)) == ([], [1, 2, 3, 4])
    switches = topo.graph().subgraph(s.name for s in topo.switches)
    assert nx.edge_connectivity(nx.Graph(switches), "e1", "e8") == 2


def test_line3_helpers() -> None:
    topo = load_topology(TOPOLOGIES / "line3.yaml")
    assert topo.host_port("h1") == Endpoint("s1", 1) == ("s1", 1)
    assert topo.host_port("h3") == ("s2", 1)
    assert topo.peer("s1", 2) == ("s2", 2)
    assert topo.peer("s2", 3) == ("s3", 2)
    assert topo.peer("s1", 1) is None  # a host port
    assert topo.host_at("s3", 1) == "h2"
    assert topo.fabric_ports("s2") == [2, 3]
    assert topo.edge_ports("s2") == [1]
    assert topo.host_mac("h1") == "02:00:00:00:00:01"
    assert topo.host_mac("h3") == "02:00:00:00:00:03"
    with pytest.raises(KeyError, match="no switch 's9'"):
        topo.fabric_ports("s9")


def test_diamond_has_two_disjoint_paths() -> None:
    topo = load_topology(TOPOLOGIES / "diamond.yaml")
    switches = nx.Graph(topo.graph().subgraph(s.name for s in topo.switches))
    paths = list(nx.node_disjoint_paths(switches, "s1", "s4"))
    assert sorted(p[1] for p in paths) == ["s2", "s3"]


def test_graph_edges_carry_ports() -> None:
    topo = load_topology(TOPOLOGIES / "line3.yaml")
    graph = topo.graph()
    assert graph.nodes["h1"]["kind"] == "host" and graph.nodes["s1"]["device_id"] == 1
    [edge] = graph.get_edge_data("s1", "s2").values()
    assert edge["ports"] == {"s1": 2, "s2": 2}


@pytest.mark.parametrize("fixture", sorted(p.name for p in DATA.glob("bad_*.yaml")))
def test_bad_file_names_line_and_field(fixture: str) -> None:
    path = DATA / fixture
    expected = _expected(path)
    assert expected, f"{fixture} marks no expected problem"
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    err = caught.value
    got = {(p.line, p.describe()) for p in err.problems}
    assert got == expected
    for line in str(err).splitlines():
        assert re.match(rf"{re.escape(str(path))}:\d+: ", line), line


def test_message_format_matches_brief() -> None:
    with pytest.raises(TopologyError) as caught:
        load_topology(DATA / "bad_references.yaml")
    assert f"{DATA / 'bad_references.yaml'}:21: links[3].b: switch 's9' is not declared" in str(caught.value).splitlines()


def test_not_a_mapping() -> None:
    with pytest.raises(TopologyError, match=r"^x.yaml:1: expected a mapping"):
        parse_topology("- just\n- a list\n", source="x.yaml")
    with pytest.raises(TopologyError, match=r"^x.yaml:1: expected a mapping"):
        parse_topology("", source="x.yaml")


SMALL = {
    "name": "small",
    "switches": [
        {"name": "s1", "device_id": 1, "grpc_addr": "127.0.0.1:50001", "ports": [1, 2]},
        {"name": "s2", "device_id": 2, "grpc_addr": "127.0.0.1:50002", "ports": [1, 2], "target": "bmv2"},
    ],
    "links": [{"a": "s1:2", "b": "s2:2"}],
    "hosts": [{"name": "h1", "attach": "s1:1", "addresses": ["10.0.0.1/24"], "mac": "02:AA:00:00:00:01"}],
}


def test_built_in_python_is_checked_the_same() -> None:
    bad = {**SMALL, "links": [{"a": "s1:2", "b": "s3:1"}]}
    with pytest.raises(ValidationError, match=r"links\[0\].b: switch 's3' is not declared"):
        Topology.model_validate(bad)


def test_defaults_and_round_trip() -> None:
    topo = Topology.model_validate(SMALL)
    assert topo.switch("s2").target is Target.BMV2 and topo.switch("s2").cpu_port == DEFAULT_CPU_PORT
    assert topo.host_mac("h1") == "02:aa:00:00:00:01"
    dumped = topo.model_dump(mode="json")
    assert dumped["links"] == [{"a": "s1:2", "b": "s2:2"}]
    assert dumped["hosts"][0]["addresses"] == ["10.0.0.1/24"]
    assert parse_topology(yaml.safe_dump(dumped)) == topo


def test_tofino_needs_its_cpu_port() -> None:
    tofino = {"name": "t1", "device_id": 1, "grpc_addr": "127.0.0.1:28000", "target": "tofino", "ports": [260]}
    with pytest.raises(ValidationError, match="cpu_port"):
        Topology.model_validate({"name": "t", "switches": [tofino]})
    topo = Topology.model_validate({"name": "t", "switches": [{**tofino, "cpu_port": 192}]})
    assert topo.switch("t1").cpu_port == 192


def test_loader_error_is_a_topology_problem() -> None:
    # Callers catch TopologyProblems for both file and in-code topologies.
    with pytest.raises(TopologyProblems):
        load_topology(DATA / "bad_references.yaml")


def test_a_tls_server_name_without_a_ca_is_refused() -> None:
    """Without a CA the client speaks plaintext, where a server name would never be checked."""
    with pytest.raises(ValidationError, match="tls_server_name is set but tls_ca is not"):
        Switch(name="s1", device_id=1, grpc_addr="127.0.0.1:9559", ports=[1], tls_server_name="s1.fabric")
    assert Switch(name="s1", device_id=1, grpc_addr="127.0.0.1:9559", ports=[1], tls_ca=Path("ca.crt"),
                  tls_server_name="s1.fabric").tls_server_name == "s1.fabric"
