"""A Scene (controller.operators.drawing) as SVG markup, for the web view.

Every name and title in it can come from a client (an NSM connection's service, a host's name in
a topology file), so every text and attribute value is escaped. Elements carry data attributes
(`data-link`, `data-switch`, `data-conn`, `data-state`) for the page's script and for tests that
read the picture from the DOM.
"""

from __future__ import annotations

from html import escape

from controller.operators.drawing import DOWN, LINK_COLOURS, SWITCH_COLOURS, Scene, route_lines

WIDTH, HEIGHT, MARGIN = 880, 460, 48
LEGEND_ROW = 18
_SWITCH, _HOST = 34, 13  # switch square side, host circle radius (px)


def _a(value: object) -> str:
    return escape(str(value), quote=True)


def render_svg(scene: Scene, width: int = WIDTH, height: int = HEIGHT) -> str:
    nodes = scene.nodes.values()
    xs, ys = [n.x for n in nodes], [n.y for n in nodes]
    x0, y0 = min(xs, default=0.0), min(ys, default=0.0)
    span_x, span_y = (max(xs, default=1.0) - x0) or 1.0, (max(ys, default=1.0) - y0) or 1.0
    # One scale for both axes (the layout's angles), centred in the drawing area.
    scale = min((width - 2 * MARGIN) / span_x, (height - 2 * MARGIN) / span_y)
    off_x = (width - span_x * scale) / 2 - x0 * scale
    off_y = (height - span_y * scale) / 2 - y0 * scale

    def at(x: float, y: float) -> tuple[float, float]:
        return round(off_x + x * scale, 1), round(off_y + y * scale, 1)

    legend_rows = len(scene.routes) + (1 if scene.hidden_routes else 0) + 1
    total_h = height + legend_rows * LEGEND_ROW + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {total_h}" width="{width}" height="{total_h}" '
           f'role="img" aria-label="{_a(scene.title)}" font-family="sans-serif">',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" class="title">{_a(scene.title)}</text>',
           '<g class="edges">']
    for e in scene.edges:
        (x1, y1), (x2, y2) = at(*_xy(scene, e.a)), at(*_xy(scene, e.b))
        dash = ' stroke-dasharray="6 4"' if e.state == DOWN else ""
        width_px = 4 if e.kind == "link" else 2
        out.append(f'<line class="{e.kind} {_a(e.state)}" data-{e.kind}="{_a(e.name)}" data-state="{_a(e.state)}" '
                   f'x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{_a(e.colour)}" stroke-width="{width_px}"{dash}>'
                   f'<title>{_a(e.name)}: {_a(e.state)}, {e.carried} connections</title></line>')
        if e.kind == "link" and (e.state == DOWN or scene.hidden_routes):
            label = "DOWN" if e.state == DOWN else str(e.carried)
            out.append(f'<text class="edge-label" x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 - 6}" text-anchor="middle" '
                       f'font-size="11" fill="{_a(e.colour)}">{_a(label)}</text>')
    out.append('</g><g class="routes">')
    for route, is_backup, lines in route_lines(scene):
        kind = "backup" if is_backup else "primary"
        style = 'stroke-width="2.5" stroke-dasharray="3 4" opacity="0.9"' if is_backup else 'stroke-width="6" opacity="0.55"'
        out.append(f'<g class="route {kind}" data-conn="{_a(route.id)}" data-path="{_a(" ".join(route.backup if is_backup else route.primary))}">')
        for x1u, y1u, x2u, y2u in lines:
            (x1, y1), (x2, y2) = at(x1u, y1u), at(x2u, y2u)
            out.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{_a(route.colour)}" {style} '
                       'stroke-linecap="round"/>')
        out.append('</g>')
    out.append('</g><g class="nodes">')
    for n in nodes:
        x, y = at(n.x, n.y)
        if n.kind == "switch":
            h = _SWITCH / 2
            out.append(f'<g class="switch {_a(n.state)}" data-switch="{_a(n.name)}" data-state="{_a(n.state)}">'
                       f'<rect x="{x - h}" y="{y - h}" width="{_SWITCH}" height="{_SWITCH}" rx="4" fill="{_a(n.colour)}"/>'
                       f'<text x="{x}" y="{y + 4}" text-anchor="middle" font-size="12" fill="white">{_a(n.name)}</text>'
                       f'<title>{_a(n.name)}: {_a(n.state)}</title></g>')
        else:
            out.append(f'<g class="host" data-host="{_a(n.name)}"><circle cx="{x}" cy="{y}" r="{_HOST}" fill="{_a(n.colour)}"/>'
                       f'<text x="{x}" y="{y + 4}" text-anchor="middle" font-size="10" fill="white">{_a(n.name)}</text></g>')
    out.append('</g>')
    y = height + 4
    out.append(f'<g class="legend" font-size="12"><text x="{MARGIN}" y="{y}">'
               f'<tspan fill="{SWITCH_COLOURS["up"]}">■ switch up</tspan>  <tspan fill="{SWITCH_COLOURS[DOWN]}">■ down</tspan>  '
               f'<tspan fill="{LINK_COLOURS["up"]}">— link up</tspan>  <tspan fill="{LINK_COLOURS[DOWN]}">- - link down</tspan>  '
               'thick: active path, dotted: backup</text>')
    for route in scene.routes:
        y += LEGEND_ROW
        out.append(f'<g data-conn="{_a(route.id)}"><rect x="{MARGIN}" y="{y - 10}" width="22" height="8" fill="{_a(route.colour)}"/>'
                   f'<text x="{MARGIN + 30}" y="{y}">{_a(route.title)} [{_a(route.id[:8])}] {_a(route.state)}: '
                   f'{_a(" → ".join(route.primary[1:-1]))}'
                   + (f' (backup {_a(" → ".join(route.backup[1:-1]))})' if route.backup else " (no backup)")
                   + '</text></g>')
    if scene.hidden_routes:
        y += LEGEND_ROW
        out.append(f'<text x="{MARGIN}" y="{y}">and {scene.hidden_routes} more connections (the numbers on the links count '
                   'active paths)</text>')
    out.append('</g></svg>')
    return "".join(out)


def _xy(scene: Scene, name: str) -> tuple[float, float]:
    n = scene.nodes[name]
    return n.x, n.y
