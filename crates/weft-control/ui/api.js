// The API as the UI uses it: every call carries the token entered at sign-in, kept in
// sessionStorage only (gone when the browser session ends). Streams (server-sent
// events) are read with fetch, so the token travels in a header, never in a URL.

const KEY = "weft-token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(t) {
  if (t) sessionStorage.setItem(KEY, t);
  else sessionStorage.removeItem(KEY);
}

/** An API error: HTTP status, the API's code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function failure(resp) {
  let code = "http-" + resp.status;
  let message = resp.statusText || "request failed";
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(resp.status, code, message);
}

async function call(method, path, body, signal) {
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", "the server did not answer (is it running?)");
  }
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

export const get = (path, signal) => call("GET", path, undefined, signal);
export const post = (path, body, signal) => call("POST", path, body, signal);

/** Every page of a list endpoint: items, and the `revisions` maps merged. */
export async function all(path, signal) {
  const items = [];
  const revisions = {};
  let after = null;
  for (let i = 0; i < 100; i++) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(path + (after ? `${sep}after=${encodeURIComponent(after)}` : ""), signal);
    items.push(...(page.items || []));
    Object.assign(revisions, page.revisions || {});
    if (!page.next) break;
    after = page.next;
  }
  return { items, revisions };
}

/**
 * Reads a server-sent event stream until it ends or `signal` aborts:
 * `onEvent(kind, data)` for each event (data parsed as JSON). Resolves when the stream
 * ends; rejects with an ApiError when it cannot be opened.
 */
export async function stream(path, onEvent, signal) {
  let resp;
  try {
    resp = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal, cache: "no-store" });
  } catch (e) {
    if (e.name === "AbortError") return;
    throw new ApiError(0, "unreachable", "the server did not answer (is it running?)");
  }
  if (!resp.ok) throw await failure(resp);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let kind = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data.push(line.slice(6));
        }
        if (data.length === 0) continue; // a keep-alive comment
        let parsed;
        try {
          parsed = JSON.parse(data.join("\n"));
        } catch (_) {
          continue;
        }
        onEvent(kind, parsed);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") throw new ApiError(0, "stream-ended", "the connection to the server was lost");
  }
}

/** What to tell a person about an error, naming the rule a 403 lacks. */
export function explain(e, what) {
  if (!(e instanceof ApiError)) return `${what}: ${e.message || e}`;
  if (e.status === 401) return `The server refused the token (${e.message}). Sign out and enter a valid token.`;
  if (e.status === 403) return `This token may not ${what} — ${e.message}`;
  if (e.status === 0) return `Cannot ${what}: ${e.message}.`;
  return `Cannot ${what}: ${e.message} (${e.status} ${e.code}).`;
}
