// The web UI in a real browser: Debian's Chromium driven by playwright-core, against the
// mesh tests/ui.rs started (real sidecars, real traffic). Every step fails on a console
// error or an uncaught page error (the browser's own log of a refused request counts too,
// except the 401/403 a step provokes on purpose); a failed step saves a screenshot to
// WEFT_UI_OUT. With WEFT_UI_SCREENSHOTS=DIR it also saves the pictures docs/ui.md shows.
//
// Env: WEFT_URL, WEFT_TOKEN (management), WEFT_READONLY_TOKEN (operator:read and
// intentions:read, no tap), WEFT_PLAYWRIGHT (playwright-core's directory), WEFT_CHROMIUM,
// WEFT_UI_OUT.

const path = require("path");
const { chromium } = require(process.env.WEFT_PLAYWRIGHT);

const URL = process.env.WEFT_URL;
const OUT = process.env.WEFT_UI_OUT;
const SHOTS = process.env.WEFT_UI_SCREENSHOTS;

function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function edge(page, key) {
  return page.$eval(`#topology path.edge[data-edge="${key}"]`, (p) => ({
    requests: Number(p.dataset.requests),
    rps: Number(p.dataset.rps),
    state: p.dataset.state,
    stroke: getComputedStyle(p).stroke,
  }));
}

async function signIn(page, token) {
  await page.goto(URL + "/ui/");
  await page.fill("#token", token);
  await page.press("#token", "Enter");
}

const steps = [
  [
    "a wrong or missing token gets a clear message, not a blank page",
    [401],
    async (page) => {
      await page.goto(URL + "/ui/");
      await page.click("form.signin button[type=submit]");
      // The browser's own validation (required) or ours: nothing was sent, the form stays.
      check(await page.isVisible("#token"), "the sign-in form stays");
      await signIn(page, "not-a-token-0000");
      await page.waitForSelector("#signin-problem:not(:empty)");
      const says = await page.textContent("#signin-problem");
      check(/refused the token/.test(says), `the message says the token was refused: ${says}`);
      check(await page.isVisible("#token"), "the sign-in form is still there");
    },
  ],
  [
    "the topology shows the real edges with their numbers rising",
    [],
    async (page) => {
      await signIn(page, process.env.WEFT_TOKEN);
      await page.waitForSelector('body[data-ready="topology"]');
      await page.waitForSelector('#topology path.edge[data-edge="frontend→payments"]', { timeout: 20000 });
      await page.waitForSelector('#topology path.edge[data-edge="frontend→inventory"]', { timeout: 20000 });
      const before = [await edge(page, "frontend→payments"), await edge(page, "frontend→inventory")];
      const updates = Number(await page.getAttribute("#topology", "data-updates"));
      await page.waitForFunction((n) => Number(document.querySelector("#topology").dataset.updates) >= n + 2, updates, { timeout: 20000 });
      const after = [await edge(page, "frontend→payments"), await edge(page, "frontend→inventory")];
      for (const i of [0, 1]) {
        check(after[i].requests > before[i].requests, `requests rise on edge ${i}: ${before[i].requests} → ${after[i].requests}`);
        check(after[i].rps > 0, `a rate on edge ${i}`);
      }
      // One in four of payments' answers is a 500: that edge stands out, the other not.
      check(after[0].state === "failing", `frontend → payments failing: ${after[0].state}`);
      check(after[0].stroke === "rgb(198, 40, 40)", `drawn red: ${after[0].stroke}`);
      check(after[1].state === "ok", `frontend → inventory healthy: ${after[1].state}`);
      check(after[1].stroke === "rgb(47, 125, 79)", `drawn green: ${after[1].stroke}`);
      const label = await page.textContent('#topology text.edge-label[data-edge="frontend→payments"]');
      check(/^[\d.]+ rps · 7\d(\.\d)?% · p99 [\d.]+ ms$/.test(label), `the edge's label shows rate, success (about 75%) and p99: ${label}`);
      const ok = await page.textContent('#topology text.edge-label[data-edge="frontend→inventory"]');
      check(/^[\d.]+ rps · 100% · p99 [\d.]+ ms$/.test(ok), `the healthy edge's label: ${ok}`);
      // Keyboard: Tab to a service, Enter opens its panel with its instances.
      await page.focus('#topology g.node[data-service="payments"]');
      await page.keyboard.press("Enter");
      await page.waitForSelector("#panel h2:text('payments')");
      await page.waitForSelector("#panel .instances li");
      const inst = await page.textContent("#panel .instances");
      check(/payments-1 .* passing/.test(inst) && /version=v1/.test(inst), `the panel lists the instance with its metadata: ${inst}`);
      if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "ui-topology.png") });
    },
  ],
  [
    "a denied intention turns its edge red",
    [],
    async (page) => {
      await signIn(page, process.env.WEFT_TOKEN);
      await page.waitForSelector('#topology path.edge[data-edge="frontend→inventory"]', { timeout: 20000 });
      check((await edge(page, "frontend→inventory")).state === "ok", "allowed at first");
      const status = await page.evaluate(async (token) => {
        const r = await fetch("/v1/config", {
          method: "POST",
          headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/yaml" },
          body: "kind: Intention\nmetadata: {name: frontend-to-inventory}\nspec: {source: frontend, destination: inventory, action: deny}\n",
        });
        return r.status;
      }, process.env.WEFT_TOKEN);
      check(status === 200, `the deny intention was applied (${status})`);
      await page.waitForFunction(() => document.querySelector('#topology path.edge[data-edge="frontend→inventory"]')?.dataset.state === "denied", null, { timeout: 20000 });
      const denied = await edge(page, "frontend→inventory");
      check(denied.stroke === "rgb(198, 40, 40)", `drawn red: ${denied.stroke}`);
      const label = await page.textContent('#topology text.edge-label[data-edge="frontend→inventory"]');
      check(/^denied · /.test(label), `its label says so: ${label}`);
      check((await edge(page, "frontend→payments")).state === "failing", "the other edge is as it was");
      if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "ui-denied.png") });
    },
  ],
  [
    "the intention check form explains a decision",
    [],
    async (page) => {
      await signIn(page, process.env.WEFT_TOKEN);
      await page.waitForSelector('body[data-ready="topology"]');
      await page.click('nav a[data-view="intentions"]');
      await page.waitForSelector('body[data-ready="intentions"]');
      const cell = await page.textContent('#matrix td[data-cell="frontend→payments"]');
      check(cell === "✓", `the matrix says frontend may call payments: ${cell}`);
      check((await page.textContent('#matrix td[data-cell="payments→frontend"]')) === "✗", "and not the other way");
      await page.fill("#check-source", "frontend");
      await page.fill("#check-destination", "inventory");
      await page.selectOption("#check-method", "POST");
      await page.fill("#check-path", "/orders");
      await page.click("#check-form button[type=submit]");
      await page.waitForSelector("#check-result .verdict");
      const verdict = await page.textContent("#check-result .verdict");
      check(/^denied: frontend → inventory POST \/orders: intention frontend-to-inventory/.test(verdict), `the verdict and why: ${verdict}`);
      await page.fill("#check-destination", "payments");
      await page.click("#check-form button[type=submit]");
      await page.waitForSelector("#check-result .verdict.allowed");
      const allowed = await page.textContent("#check-result .verdict");
      check(/^allowed: frontend → payments POST \/orders: intention frontend-to-payments/.test(allowed), allowed);
      if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "ui-intentions.png") });
    },
  ],
  [
    "services, a service's detail with a live tap, and the configuration",
    [],
    async (page) => {
      await signIn(page, process.env.WEFT_TOKEN);
      await page.waitForSelector('body[data-ready="topology"]');
      await page.click('nav a[data-view="services"]');
      await page.waitForSelector('#services tr[data-service="payments"]');
      const row = await page.textContent('#services tr[data-service="payments"]');
      check(/1 \(1\)/.test(row) && /current/.test(row), `payments: one healthy instance, its proxy current: ${row}`);
      check(/payments-route: payments 100%/.test(row), `payments' route and its split: ${row}`);
      await page.click('#services a:text("payments")');
      await page.waitForSelector('body[data-ready="service"]');
      await page.waitForSelector('#inbound tr[data-edge="frontend→payments"]');
      await page.click("#tap-toggle");
      await page.waitForSelector("#tap tbody tr", { timeout: 20000 });
      const tapped = await page.textContent("#tap tbody tr");
      check(/frontend → payments/.test(tapped) && /GET/.test(tapped), `a tapped request: ${tapped}`);
      const tapStatus = await page.textContent("#tap-status");
      check(/Tapping 1 proxy: payments-/.test(tapStatus), `the proxies tapping: ${tapStatus}`);
      if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "ui-service.png"), fullPage: true });
      await page.click("#tap-toggle");
      await page.click('nav a[data-view="config"]');
      await page.waitForSelector('body[data-ready="config"]');
      await page.click('#resources button[data-resource="Intention/frontend-to-payments"]');
      const yaml = await page.textContent("#resource-yaml");
      check(/kind: Intention/.test(yaml) && /source: frontend/.test(yaml), `the resource as YAML: ${yaml}`);
      const rev = await page.textContent('#resources button[data-resource="Intention/frontend-to-payments"] .muted');
      check(/rev \d+/.test(rev), `its version: ${rev}`);
    },
  ],
  [
    "a read-only token sees the mesh but cannot tap",
    [403],
    async (page) => {
      await signIn(page, process.env.WEFT_READONLY_TOKEN);
      await page.waitForSelector('#topology path.edge[data-edge="frontend→payments"]', { timeout: 20000 });
      await page.goto(URL + "/ui/#/services/payments");
      await page.waitForSelector('body[data-ready="service"]');
      await page.click("#tap-toggle");
      await page.waitForSelector("#tap-form + div .problem");
      const says = await page.textContent("#tap-form + div .problem");
      check(/may not tap payments/.test(says) && /tap:payments:read/.test(says), `the refusal names the rule: ${says}`);
      check((await page.$$("#tap tbody tr")).length === 0, "no request shown");
    },
  ],
  [
    "a canary rollout with its measurements",
    [],
    async (page) => {
      await signIn(page, process.env.WEFT_TOKEN);
      await page.waitForSelector('body[data-ready="topology"]');
      await page.click('nav a[data-view="canaries"]');
      await page.waitForSelector('#canaries tr[data-canary="inventory"]');
      const row = await page.textContent('#canaries tr[data-canary="inventory"]');
      check(/inventory \(stable → canary\)/.test(row) && /50%, 100%/.test(row), `the canary's row: ${row}`);
      await page.click('#canaries a:text("inventory")');
      await page.waitForSelector('body[data-ready="canary"]');
      // The leader checks every 10 s; the page re-reads the rollout every 2 s.
      await page.waitForSelector('#measurements tbody tr:has-text("pass")', { timeout: 45000 });
      const m = await page.textContent("#measurements tbody tr");
      check(/(50|100)%/.test(m) && /success rate/.test(m), `a measurement with its numbers: ${m}`);
      const summary = await page.textContent("#canary-summary");
      check(/^(progressing|promoted) — inventory: stable → canary/.test(summary), `the rollout's summary: ${summary}`);
      if (SHOTS) await page.screenshot({ path: path.join(SHOTS, "ui-canary.png") });
    },
  ],
];

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.WEFT_CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  let failed = 0;
  for (const [name, allowed, run] of steps) {
    // The API's certificate is signed by the mesh's own CA, which this browser profile
    // does not trust: the test checks the UI, tests/zero_trust.rs the TLS.
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true });
    const page = await ctx.newPage();
    const errors = [];
    page.on("console", (m) => {
      if (m.type() !== "error") return;
      const status = /status of (\d+)/.exec(m.text());
      if (status && allowed.includes(Number(status[1]))) return;
      errors.push(m.text());
    });
    page.on("pageerror", (e) => errors.push("uncaught: " + e.message));
    page.setDefaultTimeout(15000);
    try {
      await run(page);
      check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
      console.log(`ok: ${name}`);
    } catch (e) {
      failed += 1;
      const shot = path.join(OUT, name.replace(/[^a-z0-9]+/gi, "-") + ".png");
      await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
      console.log(`FAILED: ${name}: ${e.message}${errors.length ? "\n  console: " + errors.join(" | ") : ""}\n  screenshot: ${shot}`);
    }
    await ctx.close();
  }
  await browser.close();
  process.exit(failed ? 1 : 0);
})().catch((e) => {
  console.log("FAILED to drive the browser: " + (e.stack || e));
  process.exit(2);
});
