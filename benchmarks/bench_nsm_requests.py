"""NSM API: Request-to-Connection latency and Requests/s with concurrent clients, on the diamond lab.

    sudo .venv/bin/python benchmarks/bench_nsm_requests.py [--requests 1000] [--clients 100]
        [--liveness default,relaxed] [--set name=value ...] [--keep] [--no-write]

The real lab (Mininet, one `p4nsm-softswitch` per switch) and the real Controller serving the
NSM API on a unix socket, in this process. Two endpoints of one service, `p4nsm nse` processes
on h3 and h4. A load process (this file with --load) runs CLIENTS concurrent clients, each
sending NSC-style Requests one after another (own path segment, token and expiry metadata, a
KERNEL mechanism for netns h1 or h2) until REQUESTS have been sent. A Request's latency is from
the call to its answer: endpoint selected, endpoint asked, fabric entries acknowledged by every
switch, VLAN interfaces with addresses and routes made in both namespaces.

Then: every connection is in the controller, a sample pings across its interfaces, both
endpoints were used; all are Closed (timed); every switch's tables read back exactly as before
the first Request and no interface is left in any host. Prints the figures and writes
benchmarks/results/nsm_requests.md.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import math
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from benchmarks.bench_controller_setup import link_down_counter  # noqa: E402
from controller.identity import init_lab_certs, lab_settings, load_svid  # noqa: E402
from controller.nsm.base import kernel  # noqa: E402
from controller.nsm.base.channels import dial  # noqa: E402
from controller.nsm.base.metadata import Credentials  # noqa: E402
from controller.nsm.base.tokens import Signer, TokenSource  # noqa: E402
from nsm_api import connection_pb2, networkservice_pb2, networkservice_pb2_grpc  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "nsm_requests.md"
SERVICE = "bench"
CLIENT_HOSTS = ("h1", "h2")
ENDPOINTS = (("h3", "10.70.0.0/16"), ("h4", "10.71.0.0/16"))
READY_TIMEOUT_S = 120.0
PING_SAMPLE = 10
LOAD_REPORT_LIMIT = 64 * 1024 * 1024
IDLE_SAMPLE_S = 3.0  # the controller's own CPU use (keepalives, link probes) before any Request
# "relaxed" liveness, as bench_controller_setup.py's "@relaxed": a starved controller otherwise
# takes late probes for dead links, and Requests find no path.
RELAXED = {"probe_interval": "0.1", "keepalive_interval": "0.2", "keepalive_timeout": "1.0"}

log = logging.getLogger("bench")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000 if ordered else math.nan


# --- the load process ---------------------------------------------------------------------------

def _request(i: int) -> networkservice_pb2.NetworkServiceRequest:
    own = str(uuid.uuid4())
    netns = CLIENT_HOSTS[i % len(CLIENT_HOSTS)]
    conn = connection_pb2.Connection(
        id=own, network_service=SERVICE,
        path=connection_pb2.Path(index=0, path_segments=[connection_pb2.PathSegment(name=f"bench-{i}", id=own)]))
    return networkservice_pb2.NetworkServiceRequest(connection=conn, mechanism_preferences=[kernel.mechanism(netns, f"c{i:05d}")])


async def _load(address: str, requests: int, clients: int, certs: str | None) -> None:
    from controller.settings import Settings

    # each client its own channel, so with --tls each makes its own mTLS handshake
    settings = Settings.load(lab_settings(Path(certs), "nsc")) if certs else Settings.load()
    svid = load_svid(settings) if certs else None
    # with --tls signed by the nsc SVID (the server verifies it against the handshake's certificate)
    tokens = TokenSource.of("spiffe://p4nsm/bench", 600.0, Signer.of(svid))
    audience = settings.nsm_spiffe_id
    channels = [dial(address, svid) for _ in range(clients)]
    stubs = [networkservice_pb2_grpc.NetworkServiceStub(c) for c in channels]
    todo = iter(range(requests))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    made: list[tuple[int, connection_pb2.Connection]] = []

    async def client(stub: networkservice_pb2_grpc.NetworkServiceStub) -> None:
        for i in todo:
            req = _request(i)
            t0 = time.perf_counter()
            try:
                resp = await stub.Request(req, timeout=30, metadata=Credentials(*tokens.issue(audience)).as_metadata())
            except grpc.aio.AioRpcError as e:
                errors[f"{e.code().name}: {e.details()[:200]}"] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            made.append((i, resp))

    began = time.perf_counter()
    await asyncio.gather(*(client(s) for s in stubs))
    seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds, "latencies": latencies, "errors": errors, "connections": [
        {"netns": CLIENT_HOSTS[i % len(CLIENT_HOSTS)], "dst": r.context.ip_context.dst_ip_addrs[0].split("/")[0],
         "endpoint": r.network_service_endpoint_name} for i, r in made]}), flush=True)

    await asyncio.to_thread(sys.stdin.readline)  # the orchestrator has looked; now close
    closing = iter(made)
    close_errors: Counter[str] = Counter()

    async def closer(stub: networkservice_pb2_grpc.NetworkServiceStub) -> None:
        for _, conn in closing:
            try:
                await stub.Close(conn, timeout=30, metadata=Credentials(*tokens.issue(audience)).as_metadata())
            except grpc.aio.AioRpcError as e:
                close_errors[e.code().name] += 1

    began = time.perf_counter()
    await asyncio.gather(*(closer(s) for s in stubs))
    print(json.dumps({"seconds": time.perf_counter() - began, "errors": close_errors}), flush=True)
    for c in channels:
        await c.close()


# --- the orchestrator ---------------------------------------------------------------------------

async def _ping(netns: str, address: str) -> bool:
    proc = await asyncio.create_subprocess_exec("ip", "netns", "exec", netns, "ping", "-c", "2", "-i", "0.2", "-W", "1",
                                                address, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait() == 0


def _leftover_ifaces(hosts: list[str]) -> int:
    left = 0
    for host in hosts:
        out = subprocess.run(["ip", "-n", host, "-br", "link"], capture_output=True, text=True).stdout
        left += sum(1 for line in out.splitlines() if line.split("@")[0].split()[0] not in ("lo", f"{host}-eth0"))
    return left


async def _read_all(ctl) -> dict[str, Counter[bytes]]:  # type: ignore[no-untyped-def]
    return {name: Counter(e.SerializeToString(deterministic=True) for e in await c.read_table_entries())
            for name, c in ctl.clients.items()}


async def _loop_lag(out: list[float], interval: float = 0.01) -> None:
    """How late the controller's event loop wakes a 10 ms sleeper: what keepalives and link
    probes (their budget is a few probe intervals) suffer while Requests are served."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval)
        out.append(loop.time() - t0 - interval)


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=sys.stderr)


async def _readline(proc: asyncio.subprocess.Process) -> dict:
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if not line:
        raise SystemExit("the load process ended early")
    return json.loads(line)


async def orchestrate(topo, work: Path, args: argparse.Namespace, overrides: dict[str, str]) -> dict:  # type: ignore[no-untyped-def]
    from controller.runtime import Controller
    from controller.settings import Settings

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_tasks)
    # --tls: mTLS everywhere with a lab CA's certificates; else plaintext, said explicitly
    certs = work.parent / "certs"
    tls = lab_settings(certs, "controller") if args.tls else {"plaintext": "true"}
    settings = Settings.load({"metrics_address": "127.0.0.1:0", "web_address": "127.0.0.1:0", **tls, **overrides, "store_path": str(work / "store.sqlite"), "nsm_run_dir": str(work / "nsm")})
    address = f"unix://{work / 'nsm.sock'}"
    ctl = Controller(topo, settings, nsm_address=address)
    await ctl.start()
    nses: list[subprocess.Popen] = []
    try:
        if not await ctl.wait_ready(READY_TIMEOUT_S):
            raise SystemExit("switches not ready")
        baseline = await _read_all(ctl)
        env = {**os.environ, "P4NSM_NSM_RUN_DIR": str(work / "nsm")}
        for host, cidr in ENDPOINTS:
            # the child holds its own copy of the descriptor; ours can close at once
            with open(work / f"nse-{host}.log", "w") as nse_log:
                nses.append(subprocess.Popen([str(REPO / ".venv" / "bin" / "p4nsm"), "nse", "--service", SERVICE, "--netns", host,
                                              "--cidr", cidr, "--nsm-address", address, "--name", f"{SERVICE}-{host}",
                                              *(["--certs", str(certs)] if args.tls else ["--plaintext"])],
                                             env=env, stdout=subprocess.DEVNULL, stderr=nse_log))
        assert ctl.nsm is not None
        deadline = time.monotonic() + 30
        while len(ctl.nsm.endpoints.offering(SERVICE)) < len(ENDPOINTS):
            if time.monotonic() > deadline:
                raise SystemExit("endpoints did not register")
            await asyncio.sleep(0.1)

        idle0 = time.process_time()
        await asyncio.sleep(IDLE_SAMPLE_S)
        idle_cpu = (time.process_time() - idle0) / IDLE_SAMPLE_S
        lags: list[float] = []
        lag_probe = asyncio.create_task(_loop_lag(lags))
        downs = link_down_counter(ctl)
        cpu0 = time.process_time()
        load = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--load", address, "--requests", str(args.requests), "--clients", str(args.clients),
            *(["--certs", str(certs)] if args.tls else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=LOAD_REPORT_LIMIT)  # one JSON line per phase, with every latency and error
        made = await _readline(load)
        controller_cpu = time.process_time() - cpu0
        lag_probe.cancel()
        served = len(made["connections"])
        result = {"requests": args.requests, "clients": args.clients, "served": served, "seconds": made["seconds"],
                  "latencies": made["latencies"], "errors": made["errors"], "controller_cpu": controller_cpu,
                  "endpoints": Counter(c["endpoint"] for c in made["connections"]), "problems": [],
                  "lag_p99": pct(lags, 0.99), "lag_max": pct(lags, 1.0), "link_downs": downs[0], "idle_cpu": idle_cpu}
        if len(ctl.fabric.plans) != served:
            result["problems"].append(f"{len(ctl.fabric.plans)} connections in the fabric for {served} served")
        sample = random.Random(1).sample(made["connections"], min(PING_SAMPLE, served))
        pings = await asyncio.gather(*(_ping(c["netns"], c["dst"]) for c in sample))
        result["pings"] = f"{sum(pings)}/{len(pings)}"
        if not all(pings):
            result["problems"].append(f"ping failed on {len(pings) - sum(pings)} of {len(pings)} sampled connections")

        assert load.stdin is not None
        load.stdin.write(b"close\n")
        await load.stdin.drain()
        closed = await _readline(load)
        await load.wait()
        result["close_seconds"], result["close_errors"] = closed["seconds"], closed["errors"]
        if ctl.fabric.plans:
            result["problems"].append(f"{len(ctl.fabric.plans)} connections left in the fabric after Close")
        if await _read_all(ctl) != baseline:
            result["problems"].append("switch tables differ from before the first Request")
        left = _leftover_ifaces([h.name for h in topo.hosts])
        if left:
            result["problems"].append(f"{left} interfaces left in the hosts")
        return result
    finally:
        for proc in nses:
            proc.send_signal(signal.SIGINT)
        for proc in nses:
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for conn_id in list(ctl.fabric.plans):
            try:
                await asyncio.wait_for(ctl.fabric.disconnect(conn_id), 10)
            except Exception as e:  # the lab goes away anyway; keep stopping
                log.warning("cleanup disconnect %s failed: %r", conn_id, e)
        await ctl.stop()


def _row(mode: str, r: dict) -> str:
    lat = r["latencies"]
    return (f"| {mode} | {r['requests']:,} | {r['clients']} | {r['served']:,} | {r['served'] / r['seconds']:,.0f} "
            f"| {pct(lat, 0.5):.1f} | {pct(lat, 0.99):.1f} | {pct(lat, 1.0):.1f} | {r['served'] / r['close_seconds']:,.0f} "
            f"| {r['controller_cpu'] / max(r['served'], 1) * 1000:.2f} | {r['idle_cpu'] * 100:.0f}% "
            f"| {r['lag_p99']:.0f} / {r['lag_max']:.0f} | {r['link_downs']} "
            f"| {', '.join(f'{k} × {v}' for k, v in sorted(r['endpoints'].items()))} | {r['pings']} "
            f"| {'passed' if not r['problems'] else '**failed**'} |")


def report(results: dict[str, dict], began: str, load: tuple[float, float]) -> str:
    command = "sudo .venv/bin/python benchmarks/bench_nsm_requests.py " + shlex.join(sys.argv[1:])
    first = next(iter(results.values()))
    lines = [
        "# NSM API: Request-to-Connection latency and Requests/s",
        "",
        f"Measured by `{command.strip()}`",
        f"on {platform.node()}: {os.cpu_count()} CPUs (nproc), {platform.machine()}, Python {platform.python_version()}, "
        f"{began}; load average {load[0]:.2f} before, {load[1]:.2f} after (others may share the machine).",
        "",
        "diamond lab (Mininet, 4 `p4nsm-softswitch`), the real Controller serving the NSM API on a unix socket; "
        f"2 endpoints of one service (`p4nsm nse` on h3 and h4); {first['clients']} concurrent clients in another process, "
        "each sending NSC-style Requests back to back for netns h1 or h2. Latency: Request call to answer (endpoint "
        "selected and asked, fabric entries acknowledged by every switch, VLAN interfaces, addresses and routes made "
        "in both namespaces). Liveness *default*: the settings' defaults (link probes every 10 ms, 3 misses = down; "
        f"keepalive 50 ms / 150 ms); *relaxed*: {', '.join(f'`{k}={v}`' for k, v in RELAXED.items())}.",
        "",
        "| liveness | requests | clients | served | Requests/s | p50 (ms) | p99 (ms) | max (ms) | Closes/s "
        "| controller CPU ms/Request | controller CPU idle | event-loop lag p99 / max (ms) | false link-downs "
        "| endpoints used | sampled pings | checks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
        *(_row(mode, r) for mode, r in results.items()),
        "",
        "*controller CPU idle*: the controller process alone (keepalives, link probes, no Request), share of one CPU. "
        "*Event-loop lag*: how late the controller's loop woke a 10 ms sleeper while Requests were served; link probes "
        "have a budget of a few probe intervals, so a late loop is taken for dead links (*false link-downs*), and "
        "Requests then find no path (UNAVAILABLE).",
        "",
        "Checks: every served Request is a connection in the fabric; a sample pings across its kernel interfaces; "
        "after Close no connection is left, every switch's tables read back exactly as before the first Request, "
        "and no interface is left in any host.",
    ]
    for mode, r in results.items():
        if r["errors"]:
            lines += ["", f"Refused Requests ({mode}): " + "; ".join(f"{k} × {v}" for k, v in r["errors"].items())]
        if r["close_errors"]:
            lines += ["", f"Failed Closes ({mode}): " + "; ".join(f"{k} × {v}" for k, v in r["close_errors"].items())]
        if r["problems"]:
            lines += ["", f"Problems ({mode}):", "", *(f"* {p}" for p in r["problems"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--liveness", default="default,relaxed",
                        help="comma-separated: default (the settings) and/or relaxed (probes and keepalives 5-10x laxer)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="controller setting override")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, store)")
    parser.add_argument("--lock-timeout", type=float, default=1800.0, help="seconds to wait for another lab on this machine")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the controller's process into FILE (figures then suffer)")
    parser.add_argument("--tls", action="store_true", help="mTLS between the load, the controller and the endpoints (lab CA)")
    parser.add_argument("--load", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        asyncio.run(_load(args.load, args.requests, args.clients, args.certs))
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root: the lab makes network namespaces and veth pairs")
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack; USR2: every task's
    # SIGTERM (a timeout, a CI cancel) ends the run like Ctrl-C: through the Lab's cleanup.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from controller.topology import load_topology
    from lab.harness import Lab

    modes = {m: {**(RELAXED if m == "relaxed" else {}), **dict(o.split("=", 1) for o in args.set)}
             for m in args.liveness.split(",")}
    began, load_before = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()[0]
    topo = load_topology(REPO / "topologies" / "diamond.yaml")
    work = Path(tempfile.mkdtemp(prefix="p4nsm-bench-nsm-"))
    if args.tls:
        init_lab_certs(work / "certs")
    results: dict[str, dict] = {}
    try:
        with Lab(topo, work / "lab", lock_timeout=args.lock_timeout, tls=False):  # plaintext switches: the recorded figures predate the lab's TLS
            for mode, overrides in modes.items():
                run_dir = work / mode
                run_dir.mkdir()
                if args.profile:
                    import cProfile

                    with cProfile.Profile() as prof:
                        results[mode] = asyncio.run(orchestrate(topo, run_dir, args, overrides))
                    prof.dump_stats(f"{args.profile}.{mode}")
                else:
                    results[mode] = asyncio.run(orchestrate(topo, run_dir, args, overrides))
                r, lat = results[mode], results[mode]["latencies"]
                print(f"diamond, {mode} liveness{', mTLS' if args.tls else ''}: {r['served']}/{r['requests']} served with {r['clients']} clients: "
                      f"{r['served'] / r['seconds']:.0f} Requests/s, p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, "
                      f"max {pct(lat, 1.0):.1f} ms; Close {r['served'] / r['close_seconds']:.0f}/s; pings {r['pings']}; "
                      f"false link-downs {r['link_downs']}; problems: {r['problems'] or 'none'}", flush=True)
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = report(results, began, (load_before, os.getloadavg()[0]))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    print(text)
    if any(r["problems"] or r["errors"] for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
