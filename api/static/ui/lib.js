// Shared by every page: the API client (session cookie + CSRF header), DOM building, number
// formatting, and the badges. No framework: plain ES modules, served as they are.

export const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
  "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
  "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363",
];
export const TERMINAL = new Set(["succeeded", "diverged", "failed", "cancelled"]);

function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)gradlab_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

// fetch a /v1 path with the session cookie; a write carries the CSRF token. Problems become
// ApiError; a lost session goes back to the sign-in page.
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) {
    location.href = `/ui/signin?next=${encodeURIComponent(location.pathname + location.search)}`;
    throw new ApiError(401, { detail: "signed out" });
  }
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

export async function signOut() {
  await fetch("/ui/signout", { method: "POST", headers: { "X-CSRF-Token": csrfToken() } });
  location.href = "/ui/signin";
}

// h("td", {class: "num", onclick: f}, child, "text", ...)
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return el;
}

export function num(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "string") return v; // "nan", "inf" as stored
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e7) return v.toLocaleString("en");
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toString();
}

export function ago(iso) {
  if (!iso) return "–";
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toISOString().slice(0, 10);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, dataset: { status } }, status);
}

export function verdictBadge(verdict) {
  return h("span", { class: `badge verdict-${verdict || "none"}` }, verdict || "no verdict");
}

export function progressBar(exp) {
  const { step, total_steps: total } = exp.progress || {};
  const frac = total ? Math.min(1, step / total) : 0;
  return h("span", { class: "progress", title: `step ${step} of ${total}` },
    h("span", { class: "bar", style: undefined, dataset: { frac: frac.toFixed(3) } }),
    h("span", { class: "label" }, `${num(step)} / ${num(total)}`));
}

// the bar's width is set through the CSSOM (the page's CSP allows no inline style attributes)
export function sizeBars(root = document) {
  for (const bar of root.querySelectorAll(".progress .bar")) {
    bar.style.width = `${(Number(bar.dataset.frac) * 100).toFixed(1)}%`;
  }
}

export function expName(exp) {
  return exp.name || exp.spec?.name || exp.id.slice(0, 8);
}

export function seqLen(spec) {
  const t = spec?.task || {};
  if (t.name === "digits") return t.read === "rows" ? 8 : 64;
  return t.seq_len;
}

// {a: {b: 1}} -> {"a.b": 1}: the spec as dotted fields
export function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else out[key] = v;
  }
  return out;
}

export function show(v) {
  if (Array.isArray(v)) return v.length ? v.map(show).join(", ") : "[]";
  if (v && typeof v === "object") {
    return Object.entries(v).map(([k, x]) => `${k}: ${show(x)}`).join(", ");
  }
  return num(v);
}

// a grid point's values, readable: "cell = lstm · seq_len = 50"
export function pointLabel(params) {
  const parts = Object.entries(params || {}).map(
    ([k, v]) => `${k.split(".").pop()}=${v && typeof v === "object" ? v.label ?? show(v) : v}`);
  return parts.join(", ") || "base";
}

export function table(head, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows));
}

export function kv(pairs, attrs = {}) {
  return h("table", { class: "kv", ...attrs },
    h("tbody", {}, pairs.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
}

export function errorBox(err) {
  return h("p", { class: "error" }, err instanceof Error ? err.message : String(err));
}

// up to `limit` fetches at a time
export async function pool(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

// evidence and summary: the numbers a reader wants first, then the rest in name order
export const SUMMARY_FIRST = [
  "final_val_loss", "best_val_loss", "final_loss", "baseline_loss", "solved_at_step",
  "beat_baseline_at_step", "accuracy", "max_grad_norm", "nan_events", "clip_fraction",
  "steps_per_second", "device",
];
export const EVIDENCE_FIRST = [
  "ratio_first_last", "effective_horizon", "log_rate_per_step", "max_grad_norm", "nan_step",
  "nan_origin", "spectrum",
];
export function ordered(obj, first) {
  const keys = Object.keys(obj || {});
  return [...first.filter((k) => keys.includes(k)), ...keys.filter((k) => !first.includes(k)).sort()];
}
