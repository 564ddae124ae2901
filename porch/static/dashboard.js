// porchd dashboard: polls /api/status and /api/graph every second and draws the pipeline
// graph as plain SVG (layered: sources left, sinks right) plus a table of the same figures.
// A replicated pipeline is one node and one row of totals, with a row per replica under it.
"use strict";

const REFRESH_MS = 1000;
const NODE_W = 190, NODE_H = 70, COL_GAP = 90, ROW_GAP = 28, PAD = 20;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = JSON.parse(document.getElementById("colors").textContent);
const STATE_ORDER = JSON.parse(document.getElementById("state-order").textContent);
const TOKEN = new URLSearchParams(location.search).get("token");

function colorOf(state) {
  return COLORS[state] || COLORS.unknown;
}

async function fetchJson(path) {
  const headers = TOKEN ? { Authorization: "Bearer " + TOKEN } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* keep status */ }
    throw new Error(path + ": " + message);
  }
  return response.json();
}

// ---- layout (pure) --------------------------------------------------------------------

// Layers by longest path from the sources, ignoring edges that close a cycle; every sink goes
// to the last layer. Inside a layer, nodes are ordered by the mean row of their predecessors.
function layout(graph) {
  const names = graph.nodes.map((n) => n.name);
  const known = new Set(names);
  for (const e of graph.edges) if (!known.has(e.to)) { known.add(e.to); names.push(e.to); }
  const out = new Map(names.map((n) => [n, []]));
  const inDeg = new Map(names.map((n) => [n, 0]));
  for (const e of graph.edges) { out.get(e.from).push(e.to); inDeg.set(e.to, inDeg.get(e.to) + 1); }
  const back = backEdges(names, out, inDeg);
  const order = topological(names, out, back);
  const layer = new Map(names.map((n) => [n, 0]));
  for (const n of order) {
    for (const t of out.get(n)) {
      if (!back.has(n + "\u0000" + t)) layer.set(t, Math.max(layer.get(t), layer.get(n) + 1));
    }
  }
  const last = Math.max(0, ...layer.values());
  for (const n of names) if (out.get(n).length === 0 && inDeg.get(n) > 0) layer.set(n, last);
  const columns = Array.from({ length: last + 1 }, () => []);
  for (const n of names) columns[layer.get(n)].push(n);
  orderColumns(columns, graph.edges);
  const rows = Math.max(1, ...columns.map((c) => c.length));
  const height = PAD * 2 + rows * NODE_H + (rows - 1) * ROW_GAP;
  const pos = new Map();
  columns.forEach((column, i) => {
    const used = column.length * NODE_H + (column.length - 1) * ROW_GAP;
    column.forEach((n, j) => pos.set(n, {
      x: PAD + i * (NODE_W + COL_GAP),
      y: (height - used) / 2 + j * (NODE_H + ROW_GAP),
      layer: i,
    }));
  });
  const width = PAD * 2 + columns.length * NODE_W + (columns.length - 1) * COL_GAP;
  return { pos, width, height: height + 30, placeholders: names.filter((n) => !graph.nodes.some((g) => g.name === n)) };
}

function backEdges(names, out, inDeg) {
  const back = new Set(), state = new Map();
  const starts = names.filter((n) => inDeg.get(n) === 0).concat(names);
  for (const start of starts) {
    if (state.has(start)) continue;
    const stack = [[start, 0]];
    state.set(start, "open");
    while (stack.length) {
      const top = stack[stack.length - 1];
      const targets = out.get(top[0]);
      if (top[1] >= targets.length) { state.set(top[0], "done"); stack.pop(); continue; }
      const t = targets[top[1]++];
      if (state.get(t) === "open") back.add(top[0] + "\u0000" + t);
      else if (!state.has(t)) { state.set(t, "open"); stack.push([t, 0]); }
    }
  }
  return back;
}

function topological(names, out, back) {
  const deg = new Map(names.map((n) => [n, 0]));
  for (const n of names) for (const t of out.get(n)) if (!back.has(n + "\u0000" + t)) deg.set(t, deg.get(t) + 1);
  const queue = names.filter((n) => deg.get(n) === 0), order = [];
  while (queue.length) {
    const n = queue.shift();
    order.push(n);
    for (const t of out.get(n)) {
      if (back.has(n + "\u0000" + t)) continue;
      deg.set(t, deg.get(t) - 1);
      if (deg.get(t) === 0) queue.push(t);
    }
  }
  return order;
}

function orderColumns(columns, edges) {
  for (let pass = 0; pass < 2; pass++) {
    for (let i = 1; i < columns.length; i++) {
      const row = new Map(columns[i - 1].map((n, j) => [n, j]));
      const score = (n, j) => {
        const rs = edges.filter((e) => e.to === n && row.has(e.from)).map((e) => row.get(e.from));
        return rs.length ? rs.reduce((a, b) => a + b, 0) / rs.length : j;
      };
      const scored = columns[i].map((n, j) => [score(n, j), j, n]);
      scored.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      columns[i] = scored.map((s) => s[2]);
    }
  }
}

// ---- drawing --------------------------------------------------------------------------

function el(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function rate(value) {
  if (value === null || value === undefined) return "";
  return (value >= 100 ? Math.round(value) : value.toFixed(1)) + " msg/s";
}

function drawGraph(graph, status) {
  const svg = document.getElementById("graph");
  const byName = new Map(status.pipelines.map((p) => [p.name, p]));
  const hostOf = new Map(graph.nodes.map((n) => [n.name, n]));
  const { pos, width, height, placeholders } = layout(graph);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", String(height));
  svg.setAttribute("width", String(Math.max(width, 300)));
  const defs = el("defs");
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
  marker.append(el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#607d8b" }));
  defs.append(marker);
  svg.append(defs);
  const edges = el("g", { class: "edges" }), labels = el("g", { class: "labels" });
  for (const e of graph.edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    let d, lx, ly;
    if (b.layer > a.layer) {
      const mid = (x1 + x2) / 2;
      d = `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`;
      lx = mid; ly = (y1 + y2) / 2;
    } else { // an edge back (a cycle): loop under the nodes
      const low = Math.max(a.y, b.y) + NODE_H + 22;
      d = `M ${x1} ${y1} C ${x1 + 50} ${low}, ${x2 - 50} ${low}, ${x2} ${y2}`;
      lx = (x1 + x2) / 2; ly = low - 6;
    }
    const missing = placeholders.includes(e.to);
    edges.append(el("path", { d, class: "edge" + (missing ? " missing" : ""), "marker-end": "url(#arrow)",
      "data-from": e.from, "data-to": e.to }));
    const source = byName.get(e.from);
    const text = source ? rate(source.msgs_out_per_s) : "";
    if (text) {
      const w = text.length * 6.2 + 8;
      labels.append(el("rect", { class: "rate-bg", x: lx - w / 2, y: ly - 9, width: w, height: 16, rx: 3 }));
      labels.append(el("text", { class: "rate", x: lx, y: ly + 3, "text-anchor": "middle",
        "data-edge": e.from + "->" + e.to }, text));
    }
  }
  svg.append(edges);
  const nodes = el("g", { class: "nodes" });
  for (const [name, p] of pos) {
    const node = hostOf.get(name);
    const local = byName.get(name);
    const state = node ? node.state : "unknown";
    const [fill, stroke] = colorOf(state);
    const g = el("g", { class: "node", "data-name": name, "data-state": state,
      transform: `translate(${p.x},${p.y})` });
    g.append(el("rect", { width: NODE_W, height: NODE_H, rx: 8, fill, stroke, "stroke-width": 1.5,
      "stroke-dasharray": node ? "" : "5 4" }));
    g.append(el("text", { class: "name", x: 10, y: 19 }, name));
    const where = node && node.host !== "local" ? ` @ ${node.host}` : "";
    const copies = node && node.replicas ? ` · ${node.replicas.length}x` : "";
    g.append(el("text", { x: 10, y: 37, "data-field": "state" }, (node ? state : "not found") + copies + where));
    if (local) {
      g.append(el("text", { x: 10, y: 56, "data-field": "iterations" },
        `iter ${local.iterations} · ${local.rate_per_s.toFixed(1)}/s · q ${local.queue_depth}`));
    }
    g.append(el("title", {}, name + ": " + state + (local && local.last_error ? "\n" + errorText(local) : "")));
    nodes.append(g);
  }
  svg.append(nodes, labels);
}

// ---- table ----------------------------------------------------------------------------

function duration(s) {
  if (s === null || s === undefined) return "-";
  s = Math.floor(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

const num = (v, digits) => (v === null || v === undefined ? "-" : digits === undefined ? String(v) : v.toFixed(digits));
const mib = (v) => (v === null || v === undefined ? "-" : (v / 1048576).toFixed(1) + " MiB");

function cell(row, field, text) {
  const td = document.createElement("td");
  td.dataset.field = field;
  td.textContent = text;
  row.append(td);
  return td;
}

function stateCell(row, state, more) {
  const td = cell(row, "state", "");
  const dot = document.createElement("span");
  dot.className = "dot";
  dot.style.background = colorOf(state)[0];
  td.append(dot, document.createTextNode(state + (more || "")));
}

// A recovered pipeline's old error is history, shown with its age; only a failed or
// backing-off pipeline's error is its current state (red).
function errorText(p) {
  if (!p.last_error) return "";
  if (p.error_current || p.last_error_age_s === null || p.last_error_age_s === undefined) return p.last_error;
  return duration(p.last_error_age_s) + " ago: " + p.last_error;
}

// " (3 replicas)", or " (2/3 replicas)" when only 2 are in the pipeline's state (as porchctl).
function replicaCount(p) {
  if (!p.replicas || !p.replicas.length) return "";
  const same = p.replicas.filter((r) => r.state === p.state).length;
  return same === p.replicas.length ? ` (${same} replicas)` : ` (${same}/${p.replicas.length} replicas)`;
}

function pipelineRow(p, replica) {
  const tr = document.createElement("tr");
  tr.dataset.name = p.name;
  if (replica) tr.className = "replica";
  cell(tr, "name", p.name); cell(tr, "host", "local"); stateCell(tr, p.state, replicaCount(p));
  cell(tr, "pid", num(p.pid)); cell(tr, "uptime", duration(p.uptime_s));
  cell(tr, "iterations", num(p.iterations)); cell(tr, "rate", num(p.rate_per_s, 1));
  cell(tr, "msgs_in", num(p.msgs_in)); cell(tr, "msgs_in_per_s", num(p.msgs_in_per_s, 1));
  cell(tr, "msgs_out", num(p.msgs_out)); cell(tr, "msgs_out_per_s", num(p.msgs_out_per_s, 1));
  cell(tr, "queue_depth", num(p.queue_depth)); cell(tr, "cpu", num(p.cpu_percent, 1));
  cell(tr, "rss", mib(p.rss_bytes)); cell(tr, "restarts", num(p.restarts));
  cell(tr, "dropped", num(p.dropped)); cell(tr, "dead_letters", num(p.dead_letters));
  // a replicated pipeline's errors are in its replicas' rows, right under it
  const shown = p.replicas && p.replicas.length ? "" : errorText(p);
  const error = cell(tr, "last_error", shown);
  if (shown && !p.error_current) error.className = "past";
  return tr;
}

function drawTable(status) {
  const body = document.querySelector("#pipelines tbody");
  const rows = [];
  for (const p of status.pipelines) {
    rows.push(pipelineRow(p, false));
    for (const r of p.replicas || []) rows.push(pipelineRow(r, true));
  }
  for (const group of remoteGroups(status.remote || [])) {
    if (group.pipeline !== null) rows.push(remoteGroupRow(group));
    for (const r of group.rows) rows.push(remoteRow(r, group.pipeline !== null));
  }
  body.replaceChildren(...rows);
}

// Other hosts' replicas of a pipeline (NAME#TAG-K) together, where the first of them was;
// plain remote pipelines one by one (pipeline null).
function remoteGroups(remote) {
  const groups = [], byPipeline = new Map();
  for (const r of remote) {
    const mark = r.name.indexOf("#");
    if (mark < 0) { groups.push({ pipeline: null, rows: [r] }); continue; }
    const pipeline = r.name.slice(0, mark);
    if (!byPipeline.has(pipeline)) {
      byPipeline.set(pipeline, { pipeline, rows: [] });
      groups.push(byPipeline.get(pipeline));
    }
    byPipeline.get(pipeline).rows.push(r);
  }
  return groups;
}

function derivedState(states) {
  return STATE_ORDER.find((s) => states.includes(s)) || states[0] || "unknown";
}

function remoteGroupRow(group) {
  const tr = document.createElement("tr");
  tr.className = "remote";
  tr.dataset.name = group.pipeline;
  const hosts = [...new Set(group.rows.map((r) => r.hostname || r.host))].join(", ");
  cell(tr, "name", group.pipeline); cell(tr, "host", hosts);
  stateCell(tr, derivedState(group.rows.map((r) => r.state)), ` (${group.rows.length} replicas)`);
  for (let i = 0; i < 14; i++) cell(tr, "", "");
  cell(tr, "last_error", "");
  return tr;
}

function remoteRow(r, replica) {
  const tr = document.createElement("tr");
  tr.className = replica ? "remote replica" : "remote";
  tr.dataset.name = r.name;
  cell(tr, "name", r.name); cell(tr, "host", r.hostname ? `${r.hostname} (${r.host})` : r.host);
  stateCell(tr, r.state);
  for (let i = 0; i < 14; i++) cell(tr, "", i === 0 ? `seen ${r.last_seen_s}s ago` : "");
  cell(tr, "last_error", r.used ? "" : "not used (duplicate or local)");
  return tr;
}

function drawHeader(status) {
  const d = status.daemon;
  const disc = d.discovery;
  const beacons = disc ? ` · beacons sent ${disc.beacons_sent}, received ${disc.beacons_received}, rejected ${disc.beacons_rejected}` : "";
  document.getElementById("daemon").textContent = `pid ${d.pid} · v${d.version} · up ${duration(d.uptime_s)}${beacons}`;
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function drawLegend() {
  const legend = document.getElementById("legend");
  for (const state of ["running", "waiting for sources", "failed", "stopped", "unknown"]) {
    const span = document.createElement("span");
    const [fill, stroke] = colorOf(state);
    span.style.setProperty("--fill", fill);
    span.style.setProperty("--stroke", stroke);
    span.textContent = state;
    legend.append(span);
  }
}

function showProblem(message) {
  const box = document.getElementById("problem");
  box.hidden = !message;
  box.textContent = message || "";
}

async function refresh() {
  try {
    const [status, graph] = await Promise.all([fetchJson("api/status"), fetchJson("api/graph")]);
    drawHeader(status);
    drawGraph(graph, status);
    drawTable(status);
    showProblem("");
    document.body.dataset.ready = "true";
  } catch (error) {
    showProblem("cannot update: " + error.message + " (is porchd still running?)");
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

drawLegend();
refresh();
