// The topology view: services as boxes, caller → callee edges, pushed by the server every
// 2 s. The layout depends only on which services and edges exist (callers left of their
// callees, long columns wrapped), so an update that only changes numbers changes colours
// and labels in place and nothing moves.

import { get, explain } from "./api.js";
import { el, fmt, edgeState, watchTopology } from "./views.js";

const NODE_W = 168;
const NODE_H = 40;
/** Column pitch: wide enough for an edge's label when edges are labelled. */
const COL_W = 236;
const COL_W_LABELLED = 460;
const ROW_H = 58;
/** Edges labelled on the picture when there are at most this many (else on hover). */
const LABELLED_EDGES = 60;

/** Positions by service: ranks (longest caller chain, cycles broken), then rows. */
export function layout(names, edges, colW = COL_W) {
  const out = new Map(names.map((n) => [n, []]));
  const indeg = new Map(names.map((n) => [n, 0]));
  const linked = new Set();
  for (const e of edges) {
    if (!out.has(e.source) || !out.has(e.destination) || e.source === e.destination) continue;
    out.get(e.source).push(e.destination);
    indeg.set(e.destination, indeg.get(e.destination) + 1);
    linked.add(e.source).add(e.destination);
  }
  const rank = new Map();
  const done = new Set();
  const queue = names.filter((n) => indeg.get(n) === 0 && linked.has(n));
  const pending = names.filter((n) => linked.has(n));
  while (done.size < pending.length) {
    if (!queue.length) {
      // A cycle: start from its least-called service.
      let best = null;
      for (const n of pending) if (!done.has(n) && (best === null || indeg.get(n) < indeg.get(best))) best = n;
      queue.push(best);
    }
    const n = queue.shift();
    if (done.has(n)) continue;
    done.add(n);
    const r = rank.get(n) || 0;
    rank.set(n, r);
    for (const m of out.get(n)) {
      if (done.has(m)) continue;
      rank.set(m, Math.max(rank.get(m) || 0, r + 1));
      indeg.set(m, indeg.get(m) - 1);
      if (indeg.get(m) === 0) queue.push(m);
    }
  }
  const ranks = [];
  for (const n of pending) (ranks[rank.get(n)] ||= []).push(n);
  const alone = names.filter((n) => !linked.has(n));
  if (alone.length) ranks.push(alone);
  // Order within a rank by where its callers sit (fewer crossings), then by name.
  const row = new Map();
  const callers = new Map(names.map((n) => [n, []]));
  for (const [s, ds] of out) for (const d of ds) callers.get(d).push(s);
  const perColumn = Math.max(8, Math.ceil(Math.sqrt(names.length * 2)));
  const pos = new Map();
  let col = 0;
  for (const members of ranks) {
    if (!members) continue;
    const bary = (n) => {
      const ys = callers.get(n).filter((c) => row.has(c)).map((c) => row.get(c));
      return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
    };
    const keyed = members.map((n) => [bary(n), n]).sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : 1));
    const cols = Math.ceil(keyed.length / perColumn);
    const rows = Math.ceil(keyed.length / cols);
    keyed.forEach(([, n], i) => {
      const c = Math.floor(i / rows);
      const r = i % rows;
      row.set(n, r + (perColumn - rows) / 2);
      pos.set(n, { x: (col + c) * colW, y: (r + (perColumn - rows) / 2) * ROW_H });
    });
    col += cols;
  }
  return pos;
}

function curve(a, b) {
  const x1 = a.x + NODE_W;
  const y1 = a.y + NODE_H / 2;
  const x2 = b.x;
  const y2 = b.y + NODE_H / 2;
  const bend = Math.max(40, Math.abs(x2 - x1) / 2);
  return `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
}

/** The point at `t` along the edge from `a` to `b` (the curve [`curve`] draws). */
function along(a, b, t) {
  const x1 = a.x + NODE_W;
  const y1 = a.y + NODE_H / 2;
  const x2 = b.x;
  const y2 = b.y + NODE_H / 2;
  const bend = Math.max(40, Math.abs(x2 - x1) / 2);
  const u = 1 - t;
  const [k0, k1, k2, k3] = [u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t];
  return { x: k0 * x1 + k1 * (x1 + bend) + k2 * (x2 - bend) + k3 * x2, y: k0 * y1 + k1 * y1 + k2 * y2 + k3 * y2 };
}

function edgeText(e) {
  const numbers = `${fmt.rps(e.rps)} rps · ${fmt.rate(e.successRate)} · p99 ${fmt.ms(e.p99Ms)}`;
  return e.intention === "deny" ? `denied · ${numbers}` : numbers;
}

export function topologyView() {
  const svg = el("svg", { id: "topology", role: "group", "aria-label": "Services and who calls whom", tabindex: "0" });
  const defs = el(
    "defs",
    {},
    ["ok", "degraded", "failing", "denied"].map((s) =>
      el("marker", { id: `arrow-${s}`, viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse", class: `arrow state-${s}` }, el("path", { d: "M0,0 L10,5 L0,10 z" })),
    ),
  );
  const edgeLayer = el("g", { class: "edges" });
  const labelLayer = el("g", { class: "labels" });
  const nodeLayer = el("g", { class: "nodes" });
  svg.append(defs, edgeLayer, labelLayer, nodeLayer);
  const status = el("p", { class: "status", id: "topology-status", role: "status" }, "Waiting for the first picture…");
  const says = el("div", {});
  const panel = el("aside", { class: "panel", id: "panel", "aria-live": "polite" }, el("p", { class: "muted" }, "Select a service (click, or Tab and Enter) to see its instances and traffic."));
  const windowSel = el("select", { id: "window", "aria-label": "Window" }, ["10s", "1m", "10m"].map((w) => el("option", { value: w, selected: w === "1m" }, `last ${w}`)));
  const find = el("input", { id: "find", type: "search", placeholder: "Find a service", "aria-label": "Find a service", list: "topology-names" });
  const namesList = el("datalist", { id: "topology-names" });
  const fit = el("button", { type: "button", id: "fit" }, "Fit");
  const legend = el(
    "span",
    { class: "legend" },
    el("span", { class: "key state-ok" }, "healthy"),
    el("span", { class: "key state-degraded" }, "< 99% success"),
    el("span", { class: "key state-failing" }, "< 95% success"),
    el("span", { class: "key state-denied" }, "denied by intentions"),
  );
  const node = el(
    "div",
    { class: "view topology-view" },
    el("div", { class: "toolbar" }, el("h1", {}, "Topology"), windowSel, find, namesList, fit, legend),
    says,
    el("div", { class: "stage" }, svg, panel),
    status,
  );

  let shown = { sig: null, pos: new Map(), edges: new Map(), labels: new Map(), nodes: new Map() };
  let latest = null;
  let selected = null;
  let view = { x: 0, y: 0, w: 1000, h: 600 };
  let bounds = view;
  let updates = 0;
  const setView = (v) => {
    view = v;
    svg.setAttribute("viewBox", `${v.x} ${v.y} ${v.w} ${v.h}`);
  };
  const fitAll = () => {
    const pad = 30;
    const b = bounds;
    const w = Math.max(b.w + 2 * pad, 400);
    const h = Math.max(b.h + 2 * pad, 240);
    setView({ x: b.x - pad - (w - b.w - 2 * pad) / 2, y: b.y - pad - (h - b.h - 2 * pad) / 2, w, h });
  };
  fit.addEventListener("click", fitAll);

  const zoom = (factor, cx, cy) => {
    const w = Math.min(Math.max(view.w * factor, 200), Math.max(bounds.w, bounds.h) * 4 + 400);
    const k = w / view.w;
    const h = view.h * k;
    setView({ x: cx - (cx - view.x) * k, y: cy - (cy - view.y) * k, w, h });
  };
  svg.addEventListener(
    "wheel",
    (ev) => {
      ev.preventDefault();
      const r = svg.getBoundingClientRect();
      const cx = view.x + ((ev.clientX - r.left) / r.width) * view.w;
      const cy = view.y + ((ev.clientY - r.top) / r.height) * view.h;
      zoom(ev.deltaY > 0 ? 1.15 : 1 / 1.15, cx, cy);
    },
    { passive: false },
  );
  let drag = null;
  svg.addEventListener("pointerdown", (ev) => {
    if (ev.target.closest(".node")) return;
    drag = { x: ev.clientX, y: ev.clientY, view };
    svg.setPointerCapture(ev.pointerId);
  });
  svg.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const r = svg.getBoundingClientRect();
    const k = view.w / r.width;
    setView({ ...drag.view, x: drag.view.x - (ev.clientX - drag.x) * k, y: drag.view.y - (ev.clientY - drag.y) * k });
  });
  svg.addEventListener("pointerup", () => (drag = null));
  svg.addEventListener("keydown", (ev) => {
    if (ev.target !== svg) return;
    const step = view.w / 10;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (moves[ev.key]) {
      ev.preventDefault();
      setView({ ...view, x: view.x + moves[ev.key][0], y: view.y + moves[ev.key][1] });
    } else if (ev.key === "+" || ev.key === "=") zoom(1 / 1.25, view.x + view.w / 2, view.y + view.h / 2);
    else if (ev.key === "-") zoom(1.25, view.x + view.w / 2, view.y + view.h / 2);
    else if (ev.key === "0") fitAll();
  });

  const select = (name) => {
    selected = name;
    for (const [n, g] of shown.nodes) g.classList.toggle("selected", n === name);
    for (const [k, p] of shown.edges) {
      const [s, d] = k.split("→");
      p.classList.toggle("touching", name !== null && (s === name || d === name));
      p.classList.toggle("dim", name !== null && s !== name && d !== name);
    }
    renderPanel();
  };

  let panelFor = null;
  let instances = null;
  const renderPanel = () => {
    if (!selected || !latest) return;
    const s = latest.services.find((x) => x.service === selected);
    const ins = latest.edges.filter((e) => e.destination === selected);
    const outs = latest.edges.filter((e) => e.source === selected);
    const edgeList = (list, other) =>
      list.length
        ? el("ul", {}, list.map((e) => el("li", { class: `state-${edgeState(e)}` }, `${e[other]}: ${edgeText(e)}${e.intention === "deny" ? " — denied: " + e.intentionReason : ""}`)))
        : el("p", { class: "muted" }, "none");
    if (panelFor !== selected) {
      panelFor = selected;
      instances = null;
      const name = selected;
      get(`/v1/catalog/services/${encodeURIComponent(name)}`)
        .then((r) => {
          if (panelFor === name) {
            instances = r.items || [];
            renderPanel();
          }
        })
        .catch((e) => {
          if (panelFor === name) {
            instances = explain(e, `read ${name}'s instances`);
            renderPanel();
          }
        });
    }
    const instanceList =
      instances === null
        ? el("p", { class: "muted" }, "Loading instances…")
        : typeof instances === "string"
          ? el("p", { class: "problem" }, instances)
          : el(
              "ul",
              { class: "instances" },
              instances.map((i) =>
                el("li", { class: i.health === "passing" ? "state-ok" : "state-failing" }, `${i.id} ${i.address}:${i.port} ${i.health}`, Object.keys(i.metadata || {}).length ? el("span", { class: "muted" }, " " + Object.entries(i.metadata).map(([k, v]) => `${k}=${v}`).join(" ")) : ""),
              ),
            );
    panel.replaceChildren(
      el("h2", {}, selected),
      s ? el("p", {}, `${s.instances} instance(s), ${s.healthy} healthy · ${fmt.rps(s.rps)} rps in · ${fmt.rate(s.successRate)} · p99 ${fmt.ms(s.p99Ms)}`) : "",
      el("h3", {}, "Instances"),
      instanceList,
      el("h3", {}, "Called by"),
      edgeList(ins, "source"),
      el("h3", {}, "Calls"),
      edgeList(outs, "destination"),
      el("p", {}, el("a", { href: `#/services/${encodeURIComponent(selected)}` }, `Open ${selected} →`)),
    );
  };

  const rebuild = (t, names) => {
    const pos = layout(names, t.edges, t.edges.length <= LABELLED_EDGES ? COL_W_LABELLED : COL_W);
    let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    for (const p of pos.values()) {
      minX = Math.min(minX, p.x);
      minY = Math.min(minY, p.y);
      maxX = Math.max(maxX, p.x + NODE_W);
      maxY = Math.max(maxY, p.y + NODE_H);
    }
    bounds = pos.size ? { x: minX, y: minY, w: maxX - minX, h: maxY - minY } : { x: 0, y: 0, w: 400, h: 200 };
    const edges = new Map();
    const labels = new Map();
    const nodes = new Map();
    const edgeEls = [];
    const labelEls = [];
    for (const e of t.edges) {
      const a = pos.get(e.source);
      const b = pos.get(e.destination);
      if (!a || !b) continue;
      const key = `${e.source}→${e.destination}`;
      const p = el("path", { class: "edge", d: curve(a, b), "data-edge": key }, el("title", {}));
      edges.set(key, p);
      edgeEls.push(p);
      if (t.edges.length <= LABELLED_EDGES) {
        // Midway, on the outer side of the curve (above one going up, below one going down).
        const at = along(a, b, 0.5);
        const tx = el("text", { class: "edge-label", x: at.x, y: b.y < a.y ? at.y - 8 : at.y + 16, "text-anchor": "middle", "data-edge": key });
        labels.set(key, tx);
        labelEls.push(tx);
      }
    }
    const nodeEls = names.map((n) => {
      const p = pos.get(n);
      const g = el(
        "g",
        { class: "node", transform: `translate(${p.x},${p.y})`, tabindex: "0", role: "button", "data-service": n, "aria-label": n },
        el("title", {}),
        el("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
        el("text", { class: "name", x: 10, y: 17 }, n.length > 22 ? n.slice(0, 21) + "…" : n),
        el("text", { class: "sub", x: 10, y: 32 }),
      );
      g.addEventListener("click", () => select(n));
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          select(n);
        }
      });
      nodes.set(n, g);
      return g;
    });
    edgeLayer.replaceChildren(...edgeEls);
    labelLayer.replaceChildren(...labelEls);
    nodeLayer.replaceChildren(...nodeEls);
    namesList.replaceChildren(...names.map((n) => el("option", { value: n })));
    const first = shown.sig === null;
    shown = { sig: shown.sig, pos, edges, labels, nodes };
    if (first) fitAll();
  };

  const update = (t) => {
    latest = t;
    updates += 1;
    const names = t.services.map((s) => s.service);
    const known = new Set(names);
    for (const e of t.edges) {
      for (const n of [e.source, e.destination]) {
        if (!known.has(n)) {
          known.add(n);
          names.push(n);
        }
      }
    }
    const sig = names.join(",") + "|" + t.edges.map((e) => `${e.source}→${e.destination}`).join(",");
    if (sig !== shown.sig) {
      rebuild(t, names);
      shown.sig = sig;
      if (selected && !shown.nodes.has(selected)) selected = null;
      if (selected) select(selected);
    }
    for (const e of t.edges) {
      const key = `${e.source}→${e.destination}`;
      const p = shown.edges.get(key);
      if (!p) continue;
      // Only what changed is written: on a large mesh most edges keep their colour.
      const state = edgeState(e);
      const cls = `edge state-${state}${e.intention === "request" ? " l7" : ""}${selected ? (e.source === selected || e.destination === selected ? " touching" : " dim") : ""}`;
      if (p.getAttribute("class") !== cls) {
        p.setAttribute("class", cls);
        p.setAttribute("marker-end", `url(#arrow-${state})`);
        p.dataset.state = state;
      }
      p.dataset.rps = e.rps;
      p.dataset.requests = e.requests;
      const text = edgeText(e);
      p.firstChild.textContent = `${key}: ${text}; intentions: ${e.intention} (${e.intentionReason})`;
      const label = shown.labels.get(key);
      if (label && label.textContent !== text) {
        label.textContent = text;
        label.setAttribute("class", `edge-label state-${state}`);
      }
    }
    for (const s of t.services) {
      const g = shown.nodes.get(s.service);
      if (!g) continue;
      const unhealthy = s.healthy < s.instances;
      const cls = `node${unhealthy ? " unhealthy" : ""}${s.instances === 0 ? " gone" : ""}${s.service === selected ? " selected" : ""}`;
      if (g.getAttribute("class") !== cls) g.setAttribute("class", cls);
      const sub = `${s.healthy}/${s.instances} healthy · ${fmt.rps(s.rps)} rps`;
      if (g.lastChild.textContent !== sub) g.lastChild.textContent = sub;
      g.firstChild.textContent = `${s.service}: ${s.instances} instance(s), ${s.healthy} healthy; in ${fmt.rps(s.rps)} rps, ${fmt.rate(s.successRate)} success, p99 ${fmt.ms(s.p99Ms)}`;
    }
    if (selected) renderPanel();
    const missing = [];
    if (t.unanswered) missing.push(`${t.unanswered} proxies did not answer`);
    if ((t.unreachable || []).length) missing.push(`replicas not reached: ${t.unreachable.map((u) => u.server).join(", ")}`);
    status.textContent = `Updated ${new Date().toLocaleTimeString()} · ${t.services.length} services · ${t.edges.length} edges · window ${t.window}${missing.length ? " · " + missing.join("; ") : ""}`;
    says.replaceChildren();
    svg.dataset.updates = updates;
    document.body.dataset.ready = "topology";
  };

  find.addEventListener("change", () => {
    const n = find.value.trim();
    const p = shown.pos.get(n);
    if (!p) return;
    setView({ x: p.x + NODE_W / 2 - 400, y: p.y + NODE_H / 2 - 240, w: 800, h: 480 });
    select(n);
    shown.nodes.get(n).focus();
  });

  let stop = null;
  const start = () => {
    if (stop) stop();
    stop = watchTopology({ window: windowSel.value }, update, (text) => {
      says.replaceChildren(el("p", { class: "problem", role: "alert" }, text));
      document.body.dataset.ready = "topology";
    });
  };
  windowSel.addEventListener("change", start);
  start();
  return { node, close: () => stop && stop() };
}
