"""The web view's page and its script: plain HTML and a little JavaScript, no library.

The picture arrives as SVG markup the server escaped (controller.operators.drawing_svg); every
other text (connection labels, names, events) is put into the page with textContent, never as
markup. The script follows /events: a `snapshot` replaces everything, an `update` changes the
picture, the rows of connections that moved and adds the new heal events.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>p4nsm fabric</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 18px; margin: 0 0 .3em; } h2 { font-size: 15px; margin: 1.2em 0 .4em; }
#status { font-size: 12px; color: #666; } #status.live { color: #2ca02c; } #status.lost { color: #d62728; }
table { border-collapse: collapse; font-size: 12px; } td, th { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; }
tr[data-state=down] td.state { color: #d62728; font-weight: bold; } td.id { font-family: monospace; }
tr.fresh { background: #fff7d6; }
</style></head>
<body>
<h1>p4nsm fabric <span id="status">connecting…</span></h1>
<div id="picture"></div>
<h2>Connections (<span id="count">0</span>)</h2>
<table id="connections"><thead><tr><th>id</th><th>ends</th><th>state</th><th>active path</th><th>backup</th><th>labels</th></tr></thead>
<tbody></tbody></table>
<h2>Heal events (newest first)</h2>
<table id="events"><thead><tr><th>time (UTC)</th><th>event</th><th>element</th><th>detection</th><th>head-end acked</th>
<th>round</th><th>connections</th></tr></thead><tbody></tbody></table>
<p id="api">JSON: <a href="api/topology">api/topology</a> · <a href="api/connections">api/connections</a> ·
<a href="api/events">api/events</a></p>
<script src="app.js"></script>
</body></html>
"""

SCRIPT = r"""'use strict';
const MAX_EVENTS = 50;
const rows = new Map();
const seen = new Set();
const $ = (id) => document.getElementById(id);

function cell(tr, cls, text, attr) {
  const td = document.createElement('td');
  td.className = cls;
  td.textContent = text;
  if (attr) td.setAttribute('data-path', attr);
  tr.appendChild(td);
}

function connectionRow(c) {
  const tr = document.createElement('tr');
  tr.setAttribute('data-conn', c.id);
  tr.setAttribute('data-state', c.state);
  cell(tr, 'id', c.id.slice(0, 8));
  cell(tr, 'ends', c.a.host + ' (vlan ' + c.a.vlan + ') → ' + c.b.host + ' (vlan ' + c.b.vlan + ')');
  cell(tr, 'state', c.state);
  cell(tr, 'path', c.path.join(' → '), c.path.join(' '));
  cell(tr, 'backup', c.backup.length ? c.backup.join(' → ') : 'none', c.backup.join(' '));
  cell(tr, 'labels', Object.entries(c.labels).map(([k, v]) => k + '=' + v).join(' '));
  return tr;
}

function upsert(c, fresh) {
  const tr = connectionRow(c);
  if (fresh) tr.className = 'fresh';
  const old = rows.get(c.id);
  if (old) old.replaceWith(tr); else $('connections').tBodies[0].appendChild(tr);
  rows.set(c.id, tr);
}

function remove(id) {
  const tr = rows.get(id);
  if (tr) tr.remove();
  rows.delete(id);
}

const ms = (v) => (v === null || v === undefined) ? '' : v.toFixed(1) + ' ms';

function addEvent(e) {
  if (seen.has(e.seq)) return;
  seen.add(e.seq);
  const tr = document.createElement('tr');
  tr.setAttribute('data-kind', e.kind);
  tr.setAttribute('data-seq', e.seq);
  cell(tr, 'time', new Date(e.at * 1000).toISOString().slice(11, 23));
  cell(tr, 'kind', e.kind.replace('_', ' ') + (e.cause && e.cause !== 'probes' ? ' (' + e.cause + ')' : ''));
  cell(tr, 'element', e.element || (e.heads !== undefined ? e.heads + ' head entries' : ''));
  cell(tr, 'detection', ms(e.detection_ms));
  cell(tr, 'acked', e.kind === 'switchover' ? (e.after_detection_ms === null ? '' : '+' + ms(e.after_detection_ms))
                                          : ms(e.heads_acked_ms));
  cell(tr, 'round', ms(e.round_ms));
  cell(tr, 'moved', e.kind === 'heal_round' ? e.rerouted + ' rerouted' + (e.down ? ', ' + e.down + ' down' : '') : '');
  const body = $('events').tBodies[0];
  body.insertBefore(tr, body.firstChild);
  while (body.rows.length > MAX_EVENTS) body.deleteRow(body.rows.length - 1);
}

function picture(svg, version) {
  // The server escaped every text and attribute in it (drawing_svg).
  $('picture').innerHTML = svg;
  $('picture').setAttribute('data-version', version);
}

function status(text, cls) {
  $('status').textContent = text;
  $('status').className = cls;
}

const source = new EventSource('events');
source.addEventListener('snapshot', (m) => {
  const s = JSON.parse(m.data);
  picture(s.svg, s.version);
  for (const id of [...rows.keys()]) remove(id);
  s.connections.forEach((c) => upsert(c, false));
  $('events').tBodies[0].replaceChildren();
  seen.clear();
  s.events.forEach(addEvent);
  $('count').textContent = rows.size;
  status('live', 'live');
});
source.addEventListener('update', (m) => {
  const u = JSON.parse(m.data);
  picture(u.svg, u.version);
  u.removed.forEach(remove);
  u.changed.forEach((c) => upsert(c, true));
  u.events.forEach(addEvent);
  $('count').textContent = rows.size;
  status('live, updated ' + new Date().toISOString().slice(11, 19) + ' UTC', 'live');
});
source.onerror = () => status('reconnecting…', 'lost');
"""
