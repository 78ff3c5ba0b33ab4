"""The web view on fake switches: its JSON API, the picture (and that what clients named is
escaped in SVG, JSON and the page), and the server-sent updates: a snapshot first, then diffs,
coalesced so that a burst of changes is a few pushes."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET

import aiohttp
import pytest

from controller.operators.drawing import DOWN, UP, Picture, Route
from controller.operators.drawing_svg import render_svg
from controller.operators.web import WebView
from controller.operators.web_page import SCRIPT
from controller.topology import Topology
from tests.support.waiting import until
from tests.unit.fabric_rig import DIAMOND, Rig

HOSTILE = '<script>alert("x")</script> & \'quoted\' </svg>'


def diamond_topology() -> Topology:
    """The rig's DIAMOND as a topology file would say it: the same link names."""
    ports: dict[str, set[int]] = {"s1": {1}, "s4": {1}}
    for a, ap, b, bp in DIAMOND:
        ports.setdefault(a, set()).add(ap)
        ports.setdefault(b, set()).add(bp)
    return Topology.model_validate({
        "name": "diamond",
        "switches": [{"name": s, "device_id": i + 1, "grpc_addr": f"127.0.0.1:{50001 + i}", "ports": sorted(p)}
                     for i, (s, p) in enumerate(sorted(ports.items()))],
        "links": [{"a": f"{a}:{ap}", "b": f"{b}:{bp}"} for a, ap, b, bp in DIAMOND],
        "hosts": [{"name": "h1", "attach": "s1:1"}, {"name": "h4", "attach": "s4:1"}],
    })


@pytest.fixture
async def rig():
    r = Rig(DIAMOND, heal_loop=True)
    await r.start()
    try:
        yield r
    finally:
        await r.rerouter.stop()
        await r.fabric.stop()


@pytest.fixture
async def view(rig):
    web = WebView(diamond_topology(), rig.fabric, rig.rerouter, None, "127.0.0.1:0", push_interval=0.05)
    await web.start()
    try:
        yield rig, web
    finally:
        await web.stop()


async def get_json(web: WebView, path: str):
    async with aiohttp.ClientSession() as s, s.get(web.url + path) as r:
        assert r.status == 200
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        raw = await r.read()
    # every character a client chose travels escaped: no markup in the bytes at all
    assert b"<" not in raw and b">" not in raw
    return json.loads(raw)


async def test_json_api_follows_a_heal(view) -> None:
    rig, web = view
    plan = await rig.fabric.connect("h1", "h4", labels={"service": HOSTILE})
    topo = await get_json(web, "/api/topology")
    assert sorted(s["name"] for s in topo["switches"]) == ["s1", "s2", "s3", "s4"]
    assert {l["state"] for l in topo["links"]} == {UP}
    [conn] = await get_json(web, "/api/connections")
    assert conn["id"] == plan.id and conn["labels"]["service"] == HOSTILE
    assert conn["path"] == ["s1", "s2", "s4"] and conn["backup"] == ["s1", "s3", "s4"]

    cut = rig.link("s1", "s2")
    rig.fabric.set_link(cut, False)
    await until(lambda: rig.rerouter.idle and rig.fabric.plans[plan.id].a_to_b.path.switches[1] == "s3")
    await rig.rerouter.settled()
    topo = await get_json(web, "/api/topology")
    assert {l["name"]: l["state"] for l in topo["links"]}[cut] == DOWN
    [conn] = await get_json(web, "/api/connections")
    assert conn["path"] == ["s1", "s3", "s4"] and conn["backup"] == []
    events = await get_json(web, "/api/events")
    kinds = [e["kind"] for e in events]
    assert "link_down" in kinds and "switchover" in kinds
    await until(lambda: any(e["kind"] == "heal_round" for e in web.heal_log.events))
    heal = next(e for e in web.heal_log.events if e["kind"] == "heal_round")
    assert heal["rerouted"] == 1 and heal["urgent"] == 1 and heal["round_ms"] is not None


async def test_the_page_and_the_picture_are_served_and_escaped(view) -> None:
    rig, web = view
    await rig.fabric.connect("h1", "h4", labels={"service": HOSTILE})
    async with aiohttp.ClientSession() as s:
        async with s.get(web.url + "/") as r:
            assert r.status == 200 and "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert '<script src="app.js">' in await r.text()
        async with s.get(web.url + "/topology.svg") as r:
            svg = await r.text()
    root = ET.fromstring(svg)  # well-formed: nothing a client sent broke out of its text or attribute
    assert not [e for e in root.iter() if e.tag.endswith("script")]
    texts = ["".join(e.itertext()) for e in root.iter() if e.tag.endswith("text")]
    assert any(HOSTILE in t for t in texts)
    # the page puts client text in with textContent; markup only for the server's escaped SVG
    assert "innerHTML" in SCRIPT and SCRIPT.count("innerHTML") == 1 and "textContent" in SCRIPT


def test_scene_states_colours_and_escaping() -> None:
    picture = Picture(diamond_topology())
    cut = next(name for name, a, b in picture.links if {a, b} == {"s1", "s2"})
    route = Route(id=HOSTILE, title=HOSTILE, state="up", primary=("h1", "s1", "s3", "s4", "h4"), backup=(),
                  primary_links=(), backup_links=())
    scene = picture.scene([route], down_switches={"s2"}, down_links={cut})
    assert scene.nodes["s2"].state == DOWN and scene.nodes["s1"].state == UP
    edges = {e.name: e for e in scene.edges}
    assert edges[cut].state == DOWN  # and every other link of s2 with it
    assert all(e.state == DOWN for e in scene.edges if "s2" in (e.a, e.b))
    assert sum(e.carried for e in scene.edges) == 2  # the route's two links, found from its switch names
    root = ET.fromstring(render_svg(scene))
    lines = {e.get("data-link"): e.get("data-state") for e in root.iter() if e.get("data-link")}
    assert lines[cut] == DOWN
    assert [e.get("data-conn") for e in root.iter() if e.get("class") == "route primary"] == [HOSTILE]
    # the same file, the same picture
    assert Picture(diamond_topology()).positions == picture.positions
    unknown = picture.scene([], down_switches=None, down_links=None)
    assert {n.state for n in unknown.nodes.values() if n.kind == "switch"} == {"unknown"}


async def read_events(resp: aiohttp.ClientResponse, out: list[tuple[str, dict]]) -> None:
    name = ""
    async for line in resp.content:
        text = line.decode().rstrip("\n")
        if text.startswith("event: "):
            name = text[7:]
        elif text.startswith("data: "):
            out.append((name, json.loads(text[6:])))


async def test_sse_snapshot_then_one_diff_for_a_burst(view) -> None:
    rig, web = view
    first = await rig.fabric.connect("h1", "h4")
    got: list[tuple[str, dict]] = []
    async with aiohttp.ClientSession() as s, s.get(web.url + "/events") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        reader = asyncio.create_task(read_events(resp, got))
        await until(lambda: got)
        name, snap = got[0]
        assert name == "snapshot" and [c["id"] for c in snap["connections"]] == [first.id]
        pushes = web.pushes
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # a burst: 200 changes at once, then 100 more one after another
        plans = list(await asyncio.gather(*(rig.fabric.connect("h1", "h4") for _ in range(200))))
        for _ in range(100):
            plans.append(await rig.fabric.connect("h1", "h4"))
            await asyncio.sleep(0.002)
        await until(lambda: {p.id for p in plans} <= {c["id"] for _, u in got[1:] for c in u["changed"]})
        # at most one push per interval (0.05 s here), whatever the number of changes
        allowed = (loop.time() - t0) / web.push_interval + 2
        assert web.pushes - pushes <= allowed, f"{web.pushes - pushes} pushes for 300 changes in {loop.time() - t0:.2f}s"
        assert all(n == "update" for n, _ in got[1:])
        # a removal travels as an id, a change as the connection
        await rig.fabric.disconnect(first.id)
        await until(lambda: any(first.id in u["removed"] for _, u in got[1:]))
        reader.cancel()


async def test_stopping_ends_open_streams_at_once() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    web = WebView(diamond_topology(), rig.fabric, rig.rerouter, None, "127.0.0.1:0")
    await web.start()
    async with aiohttp.ClientSession() as s, s.get(web.url + "/events") as resp:
        await resp.content.readline()
        # a page left open must not hold the controller's stop (aiohttp would wait up to a minute)
        await asyncio.wait_for(web.stop(), 5)
    await rig.fabric.stop()


async def test_the_heal_log_is_bounded_and_skips_the_start_up() -> None:
    from controller.operators.web_events import HealLog

    rig = Rig(DIAMOND)
    changes: list[int] = []
    log = HealLog(rig.fabric, rig.rerouter, None, lambda: changes.append(1), size=5)
    await rig.start()  # every switch starts down and comes up: no news
    assert list(log.events) == []
    link = rig.link("s1", "s2")
    for i in range(20):
        rig.fabric.set_link(link, i % 2 == 1)
    assert len(log.events) == 5 and log.seq == 20 and [e["seq"] for e in log.since(18)] == [19, 20]
    assert log.events[-1]["kind"] == "link_up" and log.events[-2]["kind"] == "link_down"
    await rig.fabric.stop()


def test_the_png_is_drawn_from_the_same_scene(tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="the draw extra")
    from controller.commands.drawing import draw_topology, route_of_row

    row = {"id": "abc", "a": "h1 (s1:1 vlan 2)", "b": "h4 (s4:1 vlan 2)", "state": "up",
           "path": "s1 -> s2 -> s4", "backup": "s1 -> s3 -> s4"}
    route = route_of_row(row)
    assert route.primary == ("h1", "s1", "s2", "s4", "h4") and route.backup == ("h1", "s1", "s3", "s4", "h4")
    out = tmp_path / "t.png"
    draw_topology(diamond_topology(), [row], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
