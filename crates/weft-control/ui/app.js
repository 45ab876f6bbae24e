// weft's web UI: sign-in, the header, and the router (#/topology, #/services,
// #/services/NAME, #/intentions, #/canaries[/NAME], #/config). Each view is a function that fills `main`
// and returns its cleanup (closing its streams) for when another view replaces it.

import { token, setToken, get, explain } from "./api.js";
import { topologyView } from "./graph.js";
import { el, servicesView, serviceView, intentionsView, configView, canariesView } from "./views.js";

const main = document.getElementById("main");
const who = document.getElementById("who");
const signout = document.getElementById("signout");
let cleanup = null;

function show(...children) {
  if (cleanup) cleanup();
  cleanup = null;
  main.replaceChildren(...children);
}

function signIn(problem) {
  document.body.dataset.view = "signin";
  who.textContent = "";
  signout.hidden = true;
  const input = el("input", { id: "token", type: "password", autocomplete: "off", required: "", spellcheck: "false" });
  const says = el("p", { class: "problem", id: "signin-problem", role: "alert" }, problem || "");
  const form = el(
    "form",
    { class: "signin", "aria-labelledby": "signin-title" },
    el("h1", { id: "signin-title" }, "Sign in to weft"),
    el("label", { for: "token" }, "ACL token"),
    input,
    el("button", { type: "submit" }, "Sign in"),
    says,
    el(
      "p",
      { class: "muted" },
      "The token stays in this browser tab's session only. `weft demo` prints one; ",
      "an operator makes others with `weft acl create`. Everything shown here is what this token may read.",
    ),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    says.textContent = "";
    const t = input.value.trim();
    if (!t) {
      says.textContent = "Enter a token.";
      return;
    }
    setToken(t);
    try {
      await whoami();
      route();
    } catch (e) {
      setToken(null);
      says.textContent = explain(e, "sign in");
      input.focus();
    }
  });
  show(form);
  input.focus();
}

/** ACLs are off on this server: no token needed, nothing to sign out of. */
let aclOff = false;

async function whoami() {
  const me = await get("/v1/acl/token/self");
  if (me.acl === "off") {
    aclOff = true;
    who.textContent = "ACLs are off on this server";
    return me;
  }
  who.textContent = me.description || me.accessorId || "signed in";
  who.title = (me.rules || []).join(", ");
  signout.hidden = false;
  return me;
}

signout.addEventListener("click", () => {
  setToken(null);
  location.hash = "#/topology";
  signIn("Signed out.");
});

function route() {
  if (!token() && !aclOff) return signIn();
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, "")) || "topology";
  const [view, arg] = hash.split("/");
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.body.dataset.view = view;
  document.body.dataset.ready = "";
  const views = {
    topology: () => topologyView(),
    services: () => (arg ? serviceView(arg) : servicesView()),
    intentions: () => intentionsView(),
    canaries: () => canariesView(arg),
    config: () => configView(),
  };
  const make = views[view];
  if (!make) {
    show(el("p", { class: "problem", role: "alert" }, `No view named “${view}”.`));
    return;
  }
  const { node, close } = make();
  show(node);
  cleanup = close;
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);

(async () => {
  try {
    const settings = await get("./settings.json");
    if (!settings.acl || token()) {
      await whoami();
      return route();
    }
    signIn();
  } catch (e) {
    const had = token();
    setToken(null);
    signIn(had ? explain(e, "sign in") : explain(e, "reach the server"));
  }
})();
