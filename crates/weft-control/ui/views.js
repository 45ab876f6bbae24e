// The views other than the topology: services, one service, intentions, configuration;
// and the helpers every view shares (DOM building, number formats, the live stream).

import { get, post, all, stream, explain } from "./api.js";
import { toYaml } from "./yaml.js";

/** Builds an element: attributes (on* are listeners), then children (strings or nodes). */
export function el(tag, attrs, ...children) {
  const svg = ["svg", "g", "path", "rect", "text", "title", "circle", "defs", "marker"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

export const fmt = {
  rps: (x) => (x == null ? "–" : x < 10 ? x.toFixed(1) : Math.round(x).toString()),
  rate: (x) => (x == null ? "–" : (x * 100).toFixed(x >= 0.9995 || x === 0 ? 0 : 1) + "%"),
  ms: (x) => (x == null ? "–" : x < 10 ? x.toFixed(2) + " ms" : Math.round(x) + " ms"),
};

/** How an edge is doing: `denied` by intentions, `failing` (< 95% success), `degraded`
 * (< 99%), or `ok`. */
export function edgeState(e) {
  if (e.intention === "deny") return "denied";
  if (e.successRate != null && e.successRate < 0.95) return "failing";
  if (e.successRate != null && e.successRate < 0.99) return "degraded";
  return "ok";
}

/**
 * Follows `/v1/topology/stream` (the server pushes it every 2 s): `onData(topology)`;
 * `onProblem(text)` when it cannot (then it tries again, waiting longer each time, unless
 * the token was refused). Returns the function that stops it.
 */
export function watchTopology({ service, window = "1m" }, onData, onProblem) {
  const ctl = new AbortController();
  const q = new URLSearchParams({ window });
  if (service) q.set("service", service);
  (async () => {
    let wait = 1000;
    while (!ctl.signal.aborted) {
      try {
        await stream(
          `/v1/topology/stream?${q}`,
          (kind, data) => {
            wait = 1000;
            if (kind === "topology") onData(data);
            else if (kind === "problem") onProblem(`The server could not build the topology: ${data.message}`);
            else if (kind === "denied") onProblem(`The server stopped the live view: ${data.message}`);
          },
          ctl.signal,
        );
      } catch (e) {
        onProblem(explain(e, "watch the mesh"));
        if (e.status === 401 || e.status === 403) return;
      }
      if (ctl.signal.aborted) return;
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 15000);
    }
  })();
  return () => ctl.abort();
}

function section(title, ...body) {
  const id = "h-" + title.toLowerCase().replace(/[^a-z]+/g, "-");
  return el("section", { "aria-labelledby": id }, el("h2", { id }, title), ...body);
}

function table(headers, rows, attrs) {
  return el(
    "table",
    attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "none"))),
  );
}

const problem = (text) => el("p", { class: "problem", role: "alert" }, text);

/** Routes that attach to (or send to) `service`, with their backends' weights. */
function routesOf(routes, service) {
  const out = [];
  for (const r of routes) {
    const spec = r.spec || {};
    const parents = (spec.parentRefs || []).map((p) => p.name);
    const backends = (spec.rules || []).flatMap((rule) => rule.backendRefs || []);
    if (!parents.includes(service) && !backends.some((b) => b.name === service)) continue;
    const total = backends.reduce((n, b) => n + (b.weight ?? 1), 0);
    const split = backends.map((b) => `${b.name} ${total ? Math.round(((b.weight ?? 1) * 100) / total) : 0}%`).join(" / ");
    out.push(`${r.metadata.name}: ${split || "(no backends)"}`);
  }
  return out;
}

/** Proxies of a service: how many have the latest configuration. */
function proxyState(proxies, service) {
  const mine = proxies.filter((p) => p.service === service);
  if (!mine.length) return el("span", { class: "muted" }, "no proxy connected");
  const lagging = mine.filter((p) => !p.current);
  const title = mine.map((p) => `${p.proxyId}: ${p.current ? "current" : "lagging"} (applied revision ${p.currentAt ?? "none"}, ${p.updates} updates, ${p.build})`).join("\n");
  return el(
    "span",
    { class: lagging.length ? "state-lagging" : "state-current", title },
    lagging.length ? `${lagging.length} of ${mine.length} lagging` : `${mine.length} current`,
  );
}

export function servicesView() {
  const tbody = el("tbody", {});
  const says = el("div", {});
  const node = el(
    "div",
    { class: "view" },
    el("h1", {}, "Services"),
    says,
    el(
      "table",
      { id: "services" },
      el("thead", {}, el("tr", {}, ["Service", "Instances (healthy)", "Proxies' configuration", "Req/s", "Success", "p99", "Routes and splits"].map((h) => el("th", { scope: "col" }, h)))),
      tbody,
    ),
  );
  let proxies = [];
  let routes = [];
  let revision = null;
  const refresh = async () => {
    try {
      proxies = (await get("/v1/proxies")).items || [];
    } catch (e) {
      says.replaceChildren(problem(explain(e, "read the proxies' status")));
    }
    try {
      routes = (await all("/v1/config/HTTPRoute?limit=1000")).items;
    } catch (e) {
      says.replaceChildren(problem(explain(e, "read the routes")));
    }
  };
  const close = watchTopology(
    {},
    async (t) => {
      if (t.revision !== revision) {
        revision = t.revision;
        await refresh();
      }
      tbody.replaceChildren(
        ...t.services.map((s) =>
          el(
            "tr",
            { "data-service": s.service },
            el("th", { scope: "row" }, el("a", { href: `#/services/${encodeURIComponent(s.service)}` }, s.service)),
            el("td", { class: s.healthy < s.instances ? "state-failing" : "" }, `${s.instances} (${s.healthy})`),
            el("td", {}, proxyState(proxies, s.service)),
            el("td", { class: "num" }, fmt.rps(s.rps)),
            el("td", { class: "num" }, fmt.rate(s.successRate)),
            el("td", { class: "num" }, fmt.ms(s.p99Ms)),
            el("td", {}, routesOf(routes, s.service).map((r) => el("div", {}, r))),
          ),
        ),
      );
      document.body.dataset.ready = "services";
    },
    (text) => says.replaceChildren(problem(text)),
  );
  return { node, close };
}

function edgeRows(edges) {
  return edges.map((e) =>
    el(
      "tr",
      { class: `state-${edgeState(e)}`, "data-edge": `${e.source}→${e.destination}` },
      el("td", {}, e.source),
      el("td", {}, e.destination),
      el("td", { class: "num" }, fmt.rps(e.rps)),
      el("td", { class: "num" }, fmt.rate(e.successRate)),
      el("td", { class: "num" }, fmt.ms(e.p99Ms)),
      el("td", {}, e.mtls === true ? "mTLS" : e.mtls === false ? "plaintext" : "–"),
      el("td", { title: e.intentionReason || "" }, e.intention || "–"),
    ),
  );
}

const EDGE_HEADERS = ["From", "To", "Req/s", "Success", "p99", "Transport", "Intentions"];

function intentionSummary(i) {
  const s = i.spec;
  if (s.action) return s.action;
  return (s.permissions || [])
    .map((p) => `${p.action} ${(p.http?.methods || ["any method"]).join(",")} ${p.http?.path ? JSON.stringify(p.http.path) : ""}`.trim())
    .join("; ");
}

export function serviceView(name) {
  const says = el("div", {});
  const instances = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const routes = el("div", {});
  const inbound = el("div", {});
  const outbound = el("div", {});
  const intentions = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const tap = tapPanel(name);
  const node = el(
    "div",
    { class: "view" },
    el("p", {}, el("a", { href: "#/services" }, "← Services")),
    el("h1", {}, name),
    says,
    section("Instances", instances),
    section("Routes (live, last minute)", routes),
    section("Inbound", inbound),
    section("Outbound", outbound),
    section("Intentions that apply", intentions),
    section("Live requests (tap)", tap.node),
  );
  get(`/v1/catalog/services/${encodeURIComponent(name)}`)
    .then((r) =>
      instances.replaceChildren(
        table(
          ["Instance", "Address", "Health", "Metadata"],
          (r.items || []).map((i) =>
            el(
              "tr",
              {},
              el("td", {}, i.id),
              el("td", {}, `${i.address}:${i.port}`),
              el("td", { class: i.health === "passing" ? "state-ok" : "state-failing" }, i.health),
              el("td", {}, Object.entries(i.metadata || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
            ),
          ),
        ),
      ),
    )
    .catch((e) => instances.replaceChildren(problem(explain(e, `read ${name}'s instances`))));
  all("/v1/config/Intention?limit=1000")
    .then(({ items }) => {
      const mine = items.filter((i) => [name, "*"].includes(i.spec.destination) || i.spec.source === name);
      intentions.replaceChildren(
        table(
          ["Intention", "From", "To", "Decision"],
          mine.map((i) => el("tr", {}, el("td", {}, i.metadata.name), el("td", {}, i.spec.source), el("td", {}, i.spec.destination), el("td", {}, intentionSummary(i)))),
        ),
      );
    })
    .catch((e) => intentions.replaceChildren(problem(explain(e, "read the intentions"))));
  const stop = watchTopology(
    { service: name },
    (t) => {
      says.replaceChildren();
      routes.replaceChildren(
        table(
          ["Listener", "Route", "Backend", "Req/s", "Success", "p50", "p99"],
          (t.routes || []).map((r) =>
            el("tr", {}, el("td", {}, r.listener), el("td", {}, r.route), el("td", {}, r.backend), el("td", { class: "num" }, fmt.rps(r.rps)), el("td", { class: "num" }, fmt.rate(r.successRate)), el("td", { class: "num" }, fmt.ms(r.p50Ms)), el("td", { class: "num" }, fmt.ms(r.p99Ms))),
          ),
        ),
      );
      inbound.replaceChildren(table(EDGE_HEADERS, edgeRows(t.edges.filter((e) => e.destination === name)), { id: "inbound" }));
      outbound.replaceChildren(table(EDGE_HEADERS, edgeRows(t.edges.filter((e) => e.source === name)), { id: "outbound" }));
      document.body.dataset.ready = "service";
    },
    (text) => says.replaceChildren(problem(text)),
  );
  return {
    node,
    close: () => {
      stop();
      tap.close();
    },
  };
}

/** A tap of one service: start/stop, a path filter, the last 200 requests. */
function tapPanel(service) {
  let ctl = null;
  const rows = el("tbody", {});
  const says = el("div", {});
  // Which proxies tap (they said so) and which refused, with their reasons.
  const status = el("p", { id: "tap-status", class: "muted" });
  let tapping = new Set();
  let refused = new Map();
  const showStatus = () => {
    const n = tapping.size;
    const parts = [`Tapping ${n} ${n === 1 ? "proxy" : "proxies"}${n ? `: ${[...tapping].join(", ")}` : ""}.`];
    for (const [proxy, reason] of refused) parts.push(`${proxy} refused the tap: ${reason}.`);
    status.textContent = parts.join(" ");
  };
  const path = el("input", { id: "tap-path", placeholder: "/", "aria-label": "Path prefix" });
  const button = el("button", { type: "submit", id: "tap-toggle" }, "Start tap");
  const stop = () => {
    if (ctl) ctl.abort();
    ctl = null;
    button.textContent = "Start tap";
  };
  const form = el(
    "form",
    { class: "inline", id: "tap-form" },
    el("label", { for: "tap-path" }, "Path prefix "),
    path,
    button,
    el("span", { class: "muted" }, " Credentials are redacted by the proxies; at most 50 requests a second."),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (ctl) return stop();
    ctl = new AbortController();
    button.textContent = "Stop tap";
    says.replaceChildren();
    tapping = new Set();
    refused = new Map();
    showStatus();
    const q = new URLSearchParams({ maxRps: "50" });
    if (path.value.trim()) q.set("path", path.value.trim());
    const mine = ctl;
    stream(
      `/v1/tap/${encodeURIComponent(service)}?${q}`,
      (kind, e) => {
        if (kind === "joined") {
          refused.delete(e.proxyId);
          tapping.add(e.proxyId);
        } else if (kind === "left") {
          tapping.delete(e.proxyId);
        } else if (kind === "refused") {
          tapping.delete(e.proxyId);
          refused.set(e.proxyId, e.reason);
        }
        if (kind !== "tap") return showStatus();
        const at = new Date(e.startedMs).toLocaleTimeString();
        const row = el(
          "tr",
          { class: e.status >= 500 || e.status === 0 ? "state-failing" : "" },
          el("td", {}, at),
          el("td", {}, e.direction),
          el("td", {}, `${e.source} → ${e.destination}`),
          el("td", {}, e.method),
          el("td", { class: "path" }, e.path),
          el("td", { class: "num" }, e.status || "no answer"),
          el("td", { class: "num" }, fmt.ms(e.latencyMs)),
          el("td", {}, e.error || ""),
        );
        rows.prepend(row);
        while (rows.children.length > 200) rows.lastChild.remove();
      },
      mine.signal,
    )
      .then(() => {
        if (ctl === mine) stop();
      })
      .catch((e) => {
        says.replaceChildren(problem(explain(e, `tap ${service}`)));
        if (ctl === mine) stop();
      });
  });
  const node = el(
    "div",
    {},
    form,
    says,
    status,
    el("table", { id: "tap" }, el("thead", {}, el("tr", {}, ["Time", "Direction", "From → to", "Method", "Path", "Status", "Latency", "Proxy's error"].map((h) => el("th", { scope: "col" }, h)))), rows),
  );
  return { node, close: stop };
}

export function intentionsView() {
  const matrix = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const result = el("div", { id: "check-result", role: "status", "aria-live": "polite" });
  const input = (id, label, attrs) => [el("label", { for: id }, label), el("input", { id, ...attrs })];
  const names = el("datalist", { id: "service-names" });
  const form = el(
    "form",
    { class: "grid", id: "check-form" },
    ...input("check-source", "From (empty: no identity)", { list: "service-names", autocomplete: "off" }),
    ...input("check-destination", "To", { list: "service-names", required: true, autocomplete: "off" }),
    el("label", { for: "check-method" }, "Method"),
    el("select", { id: "check-method" }, ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"].map((m) => el("option", {}, m))),
    ...input("check-path", "Path", { value: "/" }),
    el("label", { for: "check-headers" }, "Headers (Name: value, one per line)"),
    el("textarea", { id: "check-headers", rows: 2 }),
    el("label", { for: "check-tcp" }, "Opaque TCP connection"),
    el("input", { id: "check-tcp", type: "checkbox" }),
    el("span", {}),
    el("button", { type: "submit" }, "Check"),
    names,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = (id) => form.querySelector("#" + id).value.trim();
    const headers = [];
    for (const line of v("check-headers").split("\n").filter((l) => l.trim())) {
      const at = line.indexOf(":");
      if (at < 1) {
        result.replaceChildren(problem(`Header “${line}”: expected Name: value.`));
        return;
      }
      headers.push([line.slice(0, at).trim(), line.slice(at + 1).trim()]);
    }
    const tcp = form.querySelector("#check-tcp").checked;
    const ask = { source: v("check-source") || null, destination: v("check-destination"), tcp };
    if (!tcp) Object.assign(ask, { method: v("check-method"), path: v("check-path") || "/", headers });
    try {
      const a = await post("/v1/intentions/check", ask);
      result.replaceChildren(el("p", { class: a.allowed ? "verdict allowed" : "verdict denied", "data-allowed": a.allowed }, a.explanation));
    } catch (e) {
      result.replaceChildren(problem(explain(e, "check intentions")));
    }
  });
  const node = el("div", { class: "view" }, el("h1", {}, "Intentions"), section("Check a call", form, result), section("Who may call whom", matrix));
  get("/v1/intentions/matrix")
    .then((m) => {
      names.replaceChildren(...m.services.map((s) => el("option", { value: s })));
      const cell = new Map(m.cells.map((c) => [`${c.source}→${c.destination}`, c]));
      const mark = { allow: "✓", deny: "✗", request: "L7", unknown: "?" };
      matrix.replaceChildren(
        el("p", { class: "muted" }, `Rows call columns. ✓ allowed, ✗ denied, L7: decided per request by permissions. Mesh default: ${m.defaultAction}.` + (m.truncated ? ` Showing the first ${m.services.length} of ${m.total} services.` : "")),
        el(
          "div",
          { class: "scroll" },
          el(
            "table",
            { id: "matrix", class: "matrix" },
            el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "from ↓ to →"), m.services.map((s) => el("th", { scope: "col" }, s)))),
            el(
              "tbody",
              {},
              m.services.map((src) =>
                el(
                  "tr",
                  {},
                  el("th", { scope: "row" }, src),
                  m.services.map((dst) => {
                    const c = cell.get(`${src}→${dst}`);
                    return el("td", { class: `decision-${c.decision}`, title: `${src} → ${dst}: ${c.reason}`, "data-cell": `${src}→${dst}` }, mark[c.decision]);
                  }),
                ),
              ),
            ),
          ),
        ),
      );
      document.body.dataset.ready = "intentions";
    })
    .catch((e) => {
      matrix.replaceChildren(problem(explain(e, "read the intentions")));
      document.body.dataset.ready = "intentions";
    });
  return { node, close: () => {} };
}

export function configView() {
  const list = el("ul", { class: "resources", id: "resources" });
  const shown = el("pre", { class: "yaml", id: "resource-yaml", tabindex: "0" });
  const says = el("div", {});
  const node = el(
    "div",
    { class: "view" },
    el("h1", {}, "Configuration"),
    el("p", { class: "muted" }, "The resources as applied, with the store revision of their last change. Read-only: change them with `weft apply`."),
    says,
    el("div", { class: "split" }, el("nav", { "aria-label": "Resources" }, list), shown),
  );
  all("/v1/config?limit=1000")
    .then(({ items, revisions }) => {
      const pick = (r, button) => {
        for (const b of list.querySelectorAll("button")) b.removeAttribute("aria-current");
        button.setAttribute("aria-current", "true");
        shown.textContent = toYaml(r);
      };
      list.replaceChildren(
        ...items.map((r) => {
          const key = `${r.kind}/${r.metadata.name}`;
          const b = el("button", { type: "button", "data-resource": key }, key, el("span", { class: "muted" }, ` rev ${revisions[key] ?? "?"}`));
          b.addEventListener("click", () => pick(r, b));
          return el("li", {}, b);
        }),
      );
      const first = list.querySelector("button");
      if (first) first.click();
      else shown.textContent = "# no resources applied yet";
      document.body.dataset.ready = "config";
    })
    .catch((e) => {
      says.replaceChildren(problem(explain(e, "read the configuration")));
      document.body.dataset.ready = "config";
    });
  return { node, close: () => {} };
}

const PHASE_STATE = { progressing: "ok", paused: "degraded", promoted: "ok", "rolled-back": "failing", aborted: "failing", pending: "degraded" };

/** Canary rollouts: every one with its phase and weight; one with every measurement.
 * Re-read every 2 s while shown (a rollout changes at most once a second). */
export function canariesView(name) {
  const says = el("div", {});
  const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const node = el(
    "div",
    { class: "view" },
    name ? el("p", {}, el("a", { href: "#/canaries" }, "← Canaries")) : "",
    el("h1", {}, name ? `Canary ${name}` : "Canaries"),
    el("p", { class: "muted" }, "Rollouts the control plane runs: each step checked from the mesh's own windows (docs/progressive-delivery.md). Commands: weft canary promote|pause|resume|abort."),
    says,
    body,
  );
  const ctl = new AbortController();
  const draw = (v) => {
    if (!name) {
      body.replaceChildren(
        table(
          ["Canary", "Service", "Phase", "Canary weight", "Steps", "Failed checks", "Reason"],
          (v.items || []).map((c) =>
            el(
              "tr",
              { "data-canary": c.name },
              el("th", { scope: "row" }, el("a", { href: `#/canaries/${encodeURIComponent(c.name)}` }, c.name)),
              el("td", {}, `${c.service} (${c.stable} → ${c.canary})`),
              el("td", { class: `state-${PHASE_STATE[c.phase] || "ok"}` }, c.phase),
              el("td", { class: "num" }, `${c.weight ?? 0}%`),
              el("td", {}, (c.steps || []).map((w) => `${w}%`).join(", ")),
              el("td", { class: "num" }, `${c.failedChecks ?? 0} of ${c.threshold}`),
              el("td", {}, c.reason || ""),
            ),
          ),
          { id: "canaries" },
        ),
      );
      document.body.dataset.ready = "canaries";
      return;
    }
    body.replaceChildren(
      el(
        "p",
        { id: "canary-summary" },
        el("span", { class: `state-${PHASE_STATE[v.phase] || "ok"}` }, v.phase),
        ` — ${v.service}: ${v.stable} → ${v.canary}, canary weight ${v.weight ?? 0}%, step ${Math.min((v.step ?? 0) + 1, Math.max((v.steps || []).length, 1))} of [${(v.steps || []).map((w) => w + "%").join(", ")}], failed checks ${v.failedChecks ?? 0} of ${v.threshold}, every ${v.interval}`,
        v.reason ? ` — ${v.reason}` : "",
      ),
      table(
        ["Time", "Weight", "Requests", "Success", "p99", "Verdict", "Why"],
        [...(v.measurements || [])].reverse().map((m) =>
          el(
            "tr",
            { class: m.verdict === "fail" ? "state-failing" : "" },
            el("td", {}, new Date(m.atMs).toLocaleTimeString()),
            el("td", { class: "num" }, `${m.weight}%`),
            el("td", { class: "num" }, m.requests),
            el("td", { class: "num" }, fmt.rate(m.successRate)),
            el("td", { class: "num" }, fmt.ms(m.p99Ms)),
            el("td", {}, m.verdict),
            el("td", {}, m.why),
          ),
        ),
        { id: "measurements" },
      ),
    );
    document.body.dataset.ready = "canary";
  };
  (async () => {
    while (!ctl.signal.aborted) {
      try {
        draw(await get(name ? `/v1/canaries/${encodeURIComponent(name)}` : "/v1/canaries", ctl.signal));
        says.replaceChildren();
      } catch (e) {
        if (e.name === "AbortError") return;
        says.replaceChildren(problem(explain(e, name ? `read canary ${name}` : "read the canaries")));
        document.body.dataset.ready = name ? "canary" : "canaries";
        if (e.status === 401 || e.status === 403 || e.status === 404) return;
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
  })();
  return { node, close: () => ctl.abort() };
}
