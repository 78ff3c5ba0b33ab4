"""`p4nsm-softswitch`: a P4Runtime switch on Linux interfaces, started like simple_switch_grpc.

    p4nsm-softswitch -i 1@veth1 -i 2@veth2 --device-id 1 --grpc-server-addr 127.0.0.1:9559 --cpu-port 255

The pipeline arrives over P4Runtime (SetForwardingPipelineConfig); until then every frame is
dropped. Options BMv2 launchers pass after `--` are accepted in the same place. The same gRPC
server serves gNMI port state (softswitch/gnmi.py). `--profile stratum|infrap4d` makes it
behave as those targets do over P4Runtime (softswitch/profiles.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from softswitch.p4info_index import Capacity
from softswitch.pipeline import Pipeline
from softswitch.ports import Ports
from softswitch.profiles import PROFILES, SOFTSWITCH
from softswitch.server import DEFAULT_MAX_RECEIVE_BYTES
from softswitch.trust import Grant, Trust

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("softswitch")

DEFAULT_ADDRESS = "127.0.0.1:9559"
DEFAULT_CPU_PORT = 255
# v1model ports are 9 bits; 511 is BMv2's drop port.
MAX_PORT = 510
STOP_GRACE = 0.5

# BMv2's level names, for launchers written for simple_switch_grpc.
_LOG_LEVELS = {
    "trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
    "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL, "off": logging.CRITICAL + 10,
}


def interface(text: str) -> tuple[int, str]:
    number, sep, ifname = text.partition("@")
    if not sep or not ifname or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected PORT@IFNAME")
    if int(number) > MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r}: port numbers go up to {MAX_PORT}")
    return int(number), ifname


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p4nsm-softswitch", description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--interface", type=interface, action="append", default=[], metavar="PORT@IFNAME",
                   help="attach a Linux interface as a switch port (repeatable)")
    p.add_argument("--device-id", type=int, default=0)
    p.add_argument("--grpc-server-addr", default=DEFAULT_ADDRESS, metavar="HOST:PORT")
    p.add_argument("--cpu-port", type=int, default=DEFAULT_CPU_PORT,
                   help="port number whose traffic travels as packet-in/packet-out")
    p.add_argument("--log-level", default="info", type=str.lower, choices=sorted(_LOG_LEVELS))
    p.add_argument("--no-p4", action="store_true", help="accepted for BMv2 compatibility: always without a program")
    p.add_argument("--profile", choices=sorted(PROFILES), default=SOFTSWITCH.name,
                   help="behave over P4Runtime as this target does (softswitch/profiles.py)")
    # simple_switch_grpc's names for its TLS options.
    p.add_argument("--grpc-server-ssl", action="store_true", help="serve TLS (needs --grpc-server-cert and --grpc-server-key)")
    p.add_argument("--grpc-server-cert", metavar="FILE", help="server certificate chain (PEM)")
    p.add_argument("--grpc-server-key", metavar="FILE", help="server private key (PEM)")
    p.add_argument("--grpc-server-cacert", metavar="FILE", help="CA certificate that client certificates must chain to (PEM)")
    p.add_argument("--grpc-server-with-client-auth", action="store_true",
                   help="require a client certificate the CA signed (mutual TLS)")
    # Ours (simple_switch_grpc has no such option): who may arbitrate and write (softswitch/trust.py).
    p.add_argument("--grpc-server-allow", type=_grant, action="append", default=[], metavar="IDENTITY[@ROLE]",
                   help="with client auth: a client identity (SPIFFE id or DNS name in its certificate) that may "
                        "arbitrate and write, for every role or for ROLE only (repeatable); none: any the CA signed")
    p.add_argument("--grpc-max-recv-msg-size", type=int, default=DEFAULT_MAX_RECEIVE_BYTES, metavar="BYTES",
                   help="largest request accepted; a larger one is refused (RESOURCE_EXHAUSTED) before it is parsed")
    p.add_argument("--grpc-open-insecure-mode", action="store_true",
                   help="infrap4d's switch: serve without TLS under a profile that has TLS by default")
    # Ours: what this one switch can hold, as a hardware target's memory limits it. A pipeline
    # that does not fit is refused with INVALID_ARGUMENT naming the table (tests make one switch
    # of a fabric refuse a revision the others take).
    p.add_argument("--max-table-size", type=int, default=0, metavar="N",
                   help="refuse a P4Info with a table or action profile of more than N entries (0: no limit)")
    p.add_argument("--refuse-table", action="append", default=[], metavar="NAME",
                   help="refuse a P4Info that declares this table, e.g. FabricIngress.label_fwd (repeatable)")
    p.add_argument("--no-reconcile", action="store_true",
                   help="answer RECONCILE_AND_COMMIT with UNIMPLEMENTED, as BMv2 and Stratum do: a commit then "
                        "starts the new pipeline empty (to measure an upgrade on such a target)")
    p.add_argument("config", nargs="?", help="ignored: the controller pushes the pipeline")
    return p


def _grant(text: str) -> Grant:
    try:
        return Grant.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    # simple_switch_grpc takes its gRPC options after "--"; here they all live in one namespace.
    p = parser()
    options = p.parse_args([a for a in argv if a != "--"])
    numbers = [number for number, _ in options.interface]
    names = [name for _, name in options.interface]
    if options.cpu_port in numbers:
        p.error(f"port {options.cpu_port} is the CPU port")
    if len(set(numbers)) != len(numbers) or len(set(names)) != len(names):
        p.error("each port number and each interface may be given once")
    profile = options.target_profile = PROFILES[options.profile]
    if options.no_reconcile:
        options.target_profile = dataclasses.replace(profile, reconcile_supported=False)
    if profile.refuse_zero_ids and options.device_id == 0:
        p.error(f"--profile {profile.name}: device id 0 is refused by that target; give --device-id 1 or more")
    # Like infrap4d, which exits when its certificates are missing unless told to run insecure.
    options.tls = options.grpc_server_ssl or (profile.tls_by_default and not options.grpc_open_insecure_mode)
    # infrap4d also requires a client certificate by default (REQUIRE_CLIENT_CERT_AND_VERIFY).
    options.client_auth = options.grpc_server_with_client_auth or (options.tls and profile.client_auth_by_default)
    if options.max_table_size < 0:
        p.error("--max-table-size: give 0 (no limit) or more")
    if options.grpc_max_recv_msg_size < 1024:
        p.error("--grpc-max-recv-msg-size: give at least 1024 bytes")
    if options.tls and not (options.grpc_server_cert and options.grpc_server_key):
        why = f"--profile {profile.name} serves TLS by default" if not options.grpc_server_ssl else "--grpc-server-ssl"
        p.error(f"{why}: give --grpc-server-cert and --grpc-server-key"
                + (", or --grpc-open-insecure-mode" if profile.tls_by_default else ""))
    if not options.tls and (options.grpc_server_cert or options.grpc_server_key or options.grpc_server_cacert):
        p.error("--grpc-server-cert, --grpc-server-key and --grpc-server-cacert need --grpc-server-ssl")
    if options.client_auth and not options.tls:
        p.error("--grpc-server-with-client-auth needs TLS (--grpc-server-ssl)")
    if options.client_auth and not options.grpc_server_cacert:
        why = f"--profile {profile.name} asks for client certificates" if not options.grpc_server_with_client_auth \
            else "--grpc-server-with-client-auth"
        p.error(f"{why}: give --grpc-server-cacert, the CA that signs them")
    if options.grpc_server_allow and not options.client_auth:
        p.error("--grpc-server-allow needs --grpc-server-with-client-auth: without client certificates no client "
                "can be told apart")
    return options


def server_credentials(options: argparse.Namespace) -> grpc.ServerCredentials | None:
    """TLS with the given certificate; with client auth, a client certificate signed by the CA
    is required (BMv2's --grpc-server-with-client-auth), else none is asked for."""
    import grpc  # here, so that --help works without the gRPC stack

    if not options.tls:
        return None
    with open(options.grpc_server_cert, "rb") as cert, open(options.grpc_server_key, "rb") as key:
        pair = (key.read(), cert.read())
    if not options.client_auth:
        return grpc.ssl_server_credentials([pair])
    with open(options.grpc_server_cacert, "rb") as ca:
        return grpc.ssl_server_credentials([pair], root_certificates=ca.read(), require_client_auth=True)


def capacity(options: argparse.Namespace) -> Capacity:
    return Capacity(options.max_table_size, frozenset(options.refuse_table))


def trust(options: argparse.Namespace) -> Trust:
    return Trust(options.client_auth, options.grpc_server_allow)


async def serve(options: argparse.Namespace) -> None:
    # Imported here so that --help works without the gRPC stack.
    from softswitch.gnmi import GnmiServer
    from softswitch.server import SoftSwitchServer

    device_id = options.device_id
    profile = options.target_profile
    ports = Ports(device_id, options.interface)
    gnmi_server = GnmiServer(ports)
    server: SoftSwitchServer | None = None

    def packet_in(payload: bytes, metadata: dict[str, int]) -> None:
        if server is not None:
            server.packet_in(payload, metadata)

    pipeline = Pipeline(device_id, options.cpu_port, ports, packet_in)
    server = SoftSwitchServer(device_id, options.cpu_port, on_commit=pipeline.load, on_packet_out=pipeline.packet_out,
                              profile=profile, trust=trust(options), max_receive_bytes=options.grpc_max_recv_msg_size,
                              capacity=capacity(options))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, ports.log_counters)

    await ports.start()
    try:
        await server.start(options.grpc_server_addr, server_credentials(options), gnmi_server.add_to)
        try:
            log.info("event=ready device=%d addr=%s cpu_port=%d profile=%s tls=%s client_auth=%s ports=%s (listening)",
                     device_id, options.grpc_server_addr, options.cpu_port, profile.name, options.tls,
                     options.client_auth, ",".join(f"{n}@{name}" for n, name in options.interface) or "none")
            if not options.client_auth:
                log.warning("event=no_client_auth device=%d: any client that reaches %s may arbitrate and take the "
                            "switch over with a higher election id; run with --grpc-server-with-client-auth",
                            device_id, options.grpc_server_addr)
            await stop.wait()
            log.info("event=stopping device=%d", device_id)
        finally:
            gnmi_server.close()
            await server.stop(STOP_GRACE)
    finally:
        await ports.stop()


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=_LOG_LEVELS[options.log_level],
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if options.config:
        log.info("event=config_ignored config=%s reason=pushed_by_controller", options.config)
    try:
        asyncio.run(serve(options))
    except OSError as err:
        log.error("event=failed device=%d error=%s", options.device_id, err)
        sys.exit(1)


if __name__ == "__main__":
    main()
