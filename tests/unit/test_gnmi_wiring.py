"""How the controller wires gNMI port state, TLS and probes from the topology and the profiles
(no switch is contacted)."""

from __future__ import annotations

from pathlib import Path

from controller.p4rt.client import TlsConfig
from controller.runtime import Controller
from controller.topology import Topology
from tests.support.settings import settings_for_test


def topology(targets: dict[str, str], **extra: object) -> Topology:
    switches = [{"name": n, "device_id": i + 1, "grpc_addr": f"127.0.0.1:{50001 + i}", "target": t,
                 "ports": [1, 2], **({} if t == "dpdk" else {"cpu_port": 255}), **extra}
                for i, (n, t) in enumerate(targets.items())]
    a, b = list(targets)
    return Topology.model_validate({"name": "two", "switches": switches, "links": [{"a": f"{a}:2", "b": f"{b}:2"}]})


def test_gnmi_clients_only_where_the_profile_serves_port_state_and_tls_for_both_clients(tmp_path: Path) -> None:
    (tmp_path / "bmv2.json").write_text('{"header_types": [], "pipelines": []}')
    settings = settings_for_test(store_path=str(tmp_path / "s.sqlite"), bmv2_json_path=str(tmp_path / "bmv2.json"))
    ctl = Controller(topology({"soft": "softswitch", "bm": "bmv2"}, tls_ca="ca.crt", tls_server_name="sw"), settings)
    try:
        assert set(ctl.port_state) == {"soft"}
        tls = TlsConfig(Path("ca.crt"), "sw")
        assert ctl.clients["soft"].target.tls == tls and ctl.port_state["soft"].tls == tls
    finally:
        ctl.store.close()


def test_probe_interval_zero_probes_nothing(tmp_path: Path) -> None:
    settings = settings_for_test(store_path=str(tmp_path / "s.sqlite"), probe_interval=0)
    ctl = Controller(topology({"a": "softswitch", "b": "softswitch"}), settings)
    try:
        assert ctl.links.links == {} and ctl.links.directions == {}
    finally:
        ctl.store.close()
