"""What the host side accepts before it touches a namespace (issue 12, item 4), without root:

- interface names: the README's pattern (IFNAME_PATTERN), checked by validate, so a Request
  naming one outside it is INVALID_ARGUMENT naming the field;
- the owner's mark: one per connection, short enough for an alias, found again in an emulated
  VLAN's alias;
- the IP context an endpoint answers, through the ipcontext element: every address, route and
  next hop inside what the service allows (the setting, narrowed by the endpoint's CIDR label),
  no default route; refused as the endpoint's failure (EndpointFailed, PERMISSION_DENIED)
  with the field at fault, before anything later in the chain runs.
"""

from __future__ import annotations

import ipaddress

import grpc
import pytest

from controller.host import kernel_iface, vlan_emu
from controller.nsm.base import kernel
from controller.nsm.base.checks import Limits
from controller.nsm.base.errors import EndpointFailed, NsmError
from controller.nsm.elements.chain import CallContext, Chain, Connection, Element, Next, Request
from controller.nsm.elements.ipcontext import CIDR_LABEL, IpContextCheck
from controller.nsm.elements.select.roundrobin import set_endpoint
from controller.nsm.elements.validate import Validate
from controller.settings import Settings
from nsm_api import connection_pb2, connectioncontext_pb2, networkservice_pb2, registry_pb2


@pytest.mark.parametrize("name", ["nsm0", "icmp-AbC123xyz", "a", "eth_1.100", "_x", "a-name-of-15chr"])
def test_names_of_the_pattern_are_taken(name: str) -> None:
    assert kernel_iface.validate_ifname("name", name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("-rf", "must match"), (".hidden", "must match"), ("a;b", "must match"), ("ä0", "must match"),
    ("a b", "must match"), ("a/b", "must match"), ("a:1", "must match"), ("x\n", "must match"), ("", "required"),
    ("a-name-of-16-chr", "16 characters"),
    (vlan_emu.inner_name("victim0"), "reserved"),
])
def test_names_outside_the_pattern_are_refused(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        kernel_iface.validate_ifname("name", name)


@pytest.mark.parametrize("service", ["-icmp", ".icmp", "ic;mp", "x"])
def test_default_names_keep_to_the_pattern(service: str) -> None:
    kernel_iface.validate_ifname("name", kernel.default_ifname(service))


async def test_validate_refuses_a_name_outside_the_pattern() -> None:
    req = networkservice_pb2.NetworkServiceRequest(
        connection=connection_pb2.Connection(id="c1", network_service="icmp"),
        mechanism_preferences=[kernel.mechanism("h1", "-rf")])
    with pytest.raises(NsmError) as caught:
        await Chain([Validate(Limits.of(Settings()))]).request(req, CallContext())
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(caught.value).startswith("mechanism_preferences[0].parameters['name']: ")


def test_marks_are_per_owner_and_fit_an_alias() -> None:
    assert kernel_iface.mark("c1") == "p4nsm:c1" != kernel_iface.mark("c2")
    long = "x" * 253
    assert kernel_iface.mark(long) == kernel_iface.mark(long) != kernel_iface.mark(long[:-1] + "y")
    assert len(kernel_iface.mark(long)) < 64 and len(kernel_iface.mark("a b\n")) < 64
    emulated = vlan_emu.alias("h1-eth0", 100, kernel_iface.mark("c1"))
    assert kernel_iface.mark_of({"ifalias": emulated}) == "p4nsm:c1"
    assert kernel_iface.mark_of({"ifalias": "p4nsm:c1"}) == "p4nsm:c1"
    for foreign in (None, "", "uplink", "p4nsm-vlan parent=h1-eth0 vid=100", f"{vlan_emu.ALIAS_PREFIX}-inner of=nsm0"):
        assert kernel_iface.mark_of({"ifalias": foreign}) is None


# --- the IP context -------------------------------------------------------------------------------

class Reached(Element):
    """Stands for the fabric and the host side: what the check let through."""

    def __init__(self) -> None:
        self.calls = 0

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        self.calls += 1
        return req.connection


def _nse(cidr: str = "") -> registry_pb2.NetworkServiceEndpoint:
    labels = {CIDR_LABEL: cidr} if cidr else {}
    return registry_pb2.NetworkServiceEndpoint(
        name="nse-1", network_service_names=["icmp"],
        network_service_labels={"icmp": registry_pb2.NetworkServiceLabels(labels=labels)})


def _answer(src: list[str], dst: list[str], src_routes: list[tuple[str, str]], dst_routes: list[tuple[str, str]] = ()
            ) -> networkservice_pb2.NetworkServiceRequest:
    ip = connectioncontext_pb2.IPContext(
        src_ip_addrs=src, dst_ip_addrs=dst,
        src_routes=[connectioncontext_pb2.Route(prefix=p, nextHop=h) for p, h in src_routes],
        dst_routes=[connectioncontext_pb2.Route(prefix=p, nextHop=h) for p, h in dst_routes])
    conn = connection_pb2.Connection(id="c1", network_service="icmp",
                                     context=connectioncontext_pb2.ConnectionContext(ip_context=ip))
    return networkservice_pb2.NetworkServiceRequest(connection=conn)


SDK_PAIR = (["10.60.0.2/32"], ["10.60.0.1/32"], [("10.60.0.1/32", "")], [("10.60.0.2/32", "")])
DEFAULTS = Settings().nsm_service_prefixes


async def _check(req: networkservice_pb2.NetworkServiceRequest, nse: registry_pb2.NetworkServiceEndpoint,
                 prefixes: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = DEFAULTS) -> Reached:
    reached = Reached()
    ctx = CallContext()
    set_endpoint(ctx, nse)
    await Chain([IpContextCheck(prefixes), reached]).request(req, ctx)
    return reached


async def test_the_sdk_endpoints_pairs_pass_with_the_defaults_and_its_label() -> None:
    for nse in (_nse(), _nse("10.60.0.0/24")):
        assert (await _check(_answer(*SDK_PAIR), nse)).calls == 1


@pytest.mark.parametrize(("answer", "field", "says"), [
    (_answer(["10.60.0.2/32"], ["10.60.0.1/32"], [("10.60.0.1/32", ""), ("0.0.0.0/0", "")]),
     "src_routes[1].prefix", "default route"),
    (_answer(["10.60.0.2/32"], ["10.60.0.1/32"], [("::/0", "")]), "src_routes[0].prefix", "default route"),
    (_answer(["10.60.0.2/32"], ["10.60.0.1/32"], [("0.0.0.0/1", ""), ("128.0.0.0/1", "")]),
     "src_routes[0].prefix", "outside"),
    (_answer(["10.60.0.2/32"], ["10.60.0.1/32"], [], [("8.8.8.0/24", "")]), "dst_routes[0].prefix", "outside"),
    (_answer(["10.60.0.2/32"], ["10.60.0.1/32"], [("10.61.0.0/24", "8.8.8.8")]), "src_routes[0].nextHop", "outside"),
    (_answer(["10.60.0.2/32"], ["203.0.113.1/32"], []), "dst_ip_addrs[0]", "outside"),
    (_answer(["10.60.0.2/7"], ["10.60.0.1/32"], []), "src_ip_addrs[0]", "outside"),  # a /7 is a route too
    (_answer(["10.60.0.2"], ["10.60.0.1/32"], []), "src_ip_addrs[0]", "not an address"),
])
async def test_an_answer_outside_the_service_is_refused_before_the_data_plane(answer, field: str, says: str) -> None:
    reached = Reached()
    ctx = CallContext()
    set_endpoint(ctx, _nse())
    with pytest.raises(EndpointFailed) as caught:
        await Chain([IpContextCheck(DEFAULTS), reached]).request(answer, ctx)
    assert caught.value.field == f"connection.context.ip_context.{field}" and says in caught.value.detail
    assert caught.value.detail.startswith(f"{field}: ")  # endpoint selection shows the detail alone
    assert caught.value.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL)
    assert reached.calls == 0


async def test_the_setting_per_service_and_the_endpoints_label_narrow_it() -> None:
    narrow = {"icmp": [ipaddress.ip_network("10.60.0.0/16")], "*": [ipaddress.ip_network("10.0.0.0/8")]}
    inside_default_only = _answer(["10.70.0.2/32"], ["10.70.0.1/32"], [("10.70.0.1/32", "")])
    for prefixes, nse in ((narrow, _nse()), (DEFAULTS, _nse("10.60.0.0/24"))):
        with pytest.raises(EndpointFailed, match=r"^connection.context.ip_context.src_ip_addrs\[0\]: src_ip_addrs\[0\]: .*outside"):
            await _check(inside_default_only, nse, prefixes)
    assert (await _check(_answer(*SDK_PAIR), _nse(), narrow)).calls == 1
    # a label cannot widen what the service allows
    with pytest.raises(EndpointFailed, match="outside"):
        await _check(_answer(["192.0.2.2/32"], ["192.0.2.1/32"], []), _nse("0.0.0.0/0"), narrow)
    with pytest.raises(EndpointFailed, match=CIDR_LABEL):
        await _check(_answer(*SDK_PAIR), _nse("not-a-prefix"))
