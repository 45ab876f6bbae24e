// JSON values as YAML, for reading (the configuration view). Strings are quoted when
// YAML would read them as something else.

const PLAIN = /^[A-Za-z_/.][A-Za-z0-9_./ -]*$/;
const SPECIAL = /^(true|false|yes|no|on|off|null|~|y|n)$/i;

function scalar(v) {
  if (v === null) return "null";
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  const s = String(v);
  if (PLAIN.test(s) && !SPECIAL.test(s) && !s.endsWith(" ") && !s.includes(": ") && !s.includes(" #")) return s;
  return JSON.stringify(s);
}

function key(k) {
  return PLAIN.test(k) && !SPECIAL.test(k) && !k.includes(" ") ? k : JSON.stringify(k);
}

const isEmpty = (v) => (Array.isArray(v) ? v.length === 0 : v && typeof v === "object" && Object.keys(v).length === 0);

function lines(v, indent) {
  const pad = "  ".repeat(indent);
  const out = [];
  if (Array.isArray(v)) {
    for (const item of v) {
      if (item !== null && typeof item === "object" && !isEmpty(item)) {
        const inner = lines(item, indent + 1);
        out.push(pad + "- " + inner[0].trimStart(), ...inner.slice(1));
      } else {
        out.push(pad + "- " + (isEmpty(item) ? (Array.isArray(item) ? "[]" : "{}") : scalar(item)));
      }
    }
  } else {
    for (const [k, item] of Object.entries(v)) {
      if (item !== null && typeof item === "object" && !isEmpty(item)) {
        out.push(pad + key(k) + ":", ...lines(item, Array.isArray(item) ? indent : indent + 1));
      } else {
        out.push(pad + key(k) + ": " + (isEmpty(item) ? (Array.isArray(item) ? "[]" : "{}") : scalar(item)));
      }
    }
  }
  return out;
}

export function toYaml(v) {
  if (v === null || typeof v !== "object") return scalar(v) + "\n";
  return lines(v, 0).join("\n") + "\n";
}
