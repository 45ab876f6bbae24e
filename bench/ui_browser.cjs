// bench/ui.py's browser side: Debian's Chromium driven by playwright-core.
//   node bench/ui_browser.cjs interactive URL SERVICES RUNS   -> {"runs": [ms, ...]}
//   node bench/ui_browser.cjs watch URL SERVICES BROWSERS SECONDS -> {"updates": [n, ...]}
// "Interactive": from the navigation's start until the topology is drawn with every
// service and a click on a service has opened its panel.
const { chromium } = require(process.env.WEFT_PLAYWRIGHT);

const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function launch() {
  return chromium.launch({ executablePath: process.env.WEFT_CHROMIUM || "/usr/bin/chromium", args: ARGS });
}

async function interactive(url, services, runs) {
  const out = [];
  for (let i = 0; i < runs; i++) {
    const browser = await launch(); // a cold browser each run: nothing cached
    const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    await page.goto(url + "/ui/#/topology", { waitUntil: "commit" });
    await page.waitForFunction((n) => document.querySelectorAll("#topology g.node").length >= n, services, { timeout: 60000, polling: 20 });
    await page.click("#topology g.node[data-service=svc-0]");
    await page.waitForSelector("#panel h2", { timeout: 60000 });
    const ms = await page.evaluate(() => performance.now());
    if (errors.length) throw new Error("console errors: " + errors.join(" | "));
    out.push(Math.round(ms));
    await browser.close();
  }
  return { runs: out };
}

async function watch(url, services, browsers, seconds) {
  const all = [];
  const pages = [];
  for (let i = 0; i < browsers; i++) {
    const b = await launch();
    all.push(b);
    const page = await (await b.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    await page.goto(url + "/ui/#/topology");
    await page.waitForFunction((n) => document.querySelectorAll("#topology g.node").length >= n, services, { timeout: 120000 });
    pages.push(page);
  }
  const start = await Promise.all(pages.map((p) => p.$eval("#topology", (s) => Number(s.dataset.updates))));
  console.error(JSON.stringify({ event: "watching", browsers }));
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const end = await Promise.all(pages.map((p) => p.$eval("#topology", (s) => Number(s.dataset.updates))));
  for (const b of all) await b.close();
  return { updates: end.map((e, i) => e - start[i]) };
}

(async () => {
  const [mode, url, services, a, b] = process.argv.slice(2);
  const result = mode === "interactive" ? await interactive(url, Number(services), Number(a)) : await watch(url, Number(services), Number(a), Number(b));
  console.log(JSON.stringify(result));
})().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
