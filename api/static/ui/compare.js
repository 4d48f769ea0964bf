// Compare 2-20 runs: the spec fields that differ, loss / validation / gradient norm overlaid
// (log or linear, smoothed), the temporal profiles at one training step, verdicts and evidence.
import { LineChart, smooth } from "./charts.js";
import {
  EVIDENCE_FIRST, PALETTE, SUMMARY_FIRST, api, clear, errorBox, expName, flatten, h, num,
  ordered, pool, show, statusBadge, verdictBadge,
} from "./lib.js";

export async function comparePage(main) {
  const ids = (new URLSearchParams(location.search).get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean);
  if (ids.length < 2 || ids.length > 20) {
    clear(main, h("h1", {}, "Compare"),
      h("p", {}, "Pick 2 to 20 runs on the ", h("a", { href: "/" }, "runs page"), " (tick them, then Compare selected), or open a sweep and compare a grid point's seeds."));
    return;
  }
  clear(main, h("h1", {}, `Compare ${ids.length} runs`), h("p", { class: "muted" }, "loading…"));
  let runs;
  try {
    runs = await pool(ids, 6, async (id, i) => {
      const base = `/v1/experiments/${encodeURIComponent(id)}`;
      const [exp, metrics, grads] = await Promise.all([
        api(base), api(`${base}/metrics?max_points=1000`), api(`${base}/gradients?max_points=200`),
      ]);
      return { exp, metrics, grads, color: PALETTE[i % PALETTE.length], label: expName(exp) };
    });
  } catch (err) {
    clear(main, h("h1", {}, "Compare"), errorBox(err));
    return;
  }
  const seen = new Map(); // two runs with one name get their short id too
  for (const r of runs) seen.set(r.label, (seen.get(r.label) || 0) + 1);
  for (const r of runs) if (seen.get(r.label) > 1) r.label = `${r.label} (${r.exp.id.slice(0, 6)})`;

  const swatch = (r) => h("span", { class: "swatch", dataset: { color: r.color } });
  const head = () => ["", ...runs.map((r) => h("span", {}, swatch(r), h("a", { href: `/ui/runs/${r.exp.id}` }, r.label)))];

  // the spec fields that differ
  const flats = runs.map((r) => flatten(r.exp.spec));
  const keys = [...new Set(flats.flatMap((f) => Object.keys(f)))].sort();
  const differ = keys.filter((k) => new Set(flats.map((f) => JSON.stringify(f[k]))).size > 1);
  const diff = h("table", { id: "spec-diff", class: "grid" },
    h("thead", {}, h("tr", {}, head().map((c) => h("th", {}, c)))),
    h("tbody", {}, differ.length ? differ.map((k) => h("tr", {}, h("th", {}, k), flats.map((f) => h("td", {}, show(f[k])))))
      : h("tr", {}, h("td", { colspan: runs.length + 1, class: "muted" }, "the specs are the same (seeds included)"))));

  // controls
  const logY = h("input", { type: "checkbox", id: "cmp-log", checked: true });
  const alpha = h("input", { type: "range", id: "cmp-smooth", min: 0, max: 0.98, step: 0.02, value: 0 });
  const alphaText = h("span", { class: "muted" }, "none");
  const charts = {
    loss: new LineChart(h("div", { class: "chart", id: "cmp-loss" }), { title: "training loss", yLabel: "loss", logY: true }),
    val: new LineChart(h("div", { class: "chart", id: "cmp-val" }), { title: "validation loss", yLabel: "loss", logY: true }),
    grad: new LineChart(h("div", { class: "chart", id: "cmp-grad" }), { title: "global gradient norm, before clipping", yLabel: "L2 norm", logY: true }),
  };
  const profile = new LineChart(h("div", { class: "chart", id: "cmp-profile" }), {
    title: "temporal profile, layer 0", xLabel: "steps back from the last time step", yLabel: "||dL/dh_t||", logY: true });

  const maxStep = Math.max(0, ...runs.map((r) => r.exp.progress.total_steps - 1));
  const stepPick = h("input", { type: "range", id: "cmp-step", min: 0, max: maxStep, value: maxStep });
  const stepText = h("span", { id: "cmp-step-text" });

  function drawLines(changes = {}) {
    const a = Number(alpha.value);
    alphaText.textContent = a ? `EMA ${a.toFixed(2)}` : "none";
    const mk = (pick) => runs.map((r) => {
      const [x, y] = pick(r);
      return { label: r.label, color: r.color, x, y: smooth(y, a) };
    });
    charts.loss.set(mk((r) => [r.metrics.steps, r.metrics.loss]), changes);
    charts.val.set(mk((r) => [r.metrics.validation.steps, r.metrics.validation.loss]), changes);
    charts.grad.set(mk((r) => [r.grads.steps, r.grads.global_norm.before_clip]), changes);
  }

  function drawProfiles() {
    const want = Number(stepPick.value);
    const used = [];
    const series = [];
    for (const r of runs) {
      const L = (r.grads.temporal?.layers || []).find((l) => l.layer === 0);
      if (!L || !L.steps.length) continue;
      let i = 0; // the last instrumented step at or before the one chosen
      for (let k = 0; k < L.steps.length; k++) if (L.steps[k] <= want) i = k;
      const row = L.values[i];
      const T = row.length;
      // x: steps back from the end, so runs of different lengths line up where the loss is read
      series.push({ label: `${r.label} @ ${L.steps[i]}`, color: r.color, x: row.map((_, t) => T - 1 - t).reverse(), y: [...row].reverse() });
      used.push(L.steps[i]);
    }
    stepText.textContent = ` ${want} (nearest instrumented: ${[...new Set(used)].join(", ") || "none"})`;
    profile.set(series);
  }

  logY.addEventListener("change", () => { drawLines({ logY: logY.checked }); });
  alpha.addEventListener("input", () => drawLines());
  stepPick.addEventListener("input", drawProfiles);

  // verdicts and evidence in one table
  const evid = runs.map((r) => {
    const { thresholds, ...ev } = r.exp.diagnosis?.evidence || {};
    return flatten(ev);
  });
  const evKeys = ordered(Object.fromEntries(evid.flatMap((e) => Object.keys(e)).map((k) => [k, 1])),
    EVIDENCE_FIRST.flatMap((k) => evid.flatMap((e) => Object.keys(e)).filter((f) => f === k || f.startsWith(`${k}.`))));
  const sums = runs.map((r) => r.exp.summary || {});
  const sumKeys = SUMMARY_FIRST.filter((k) => sums.some((s) => k in s));
  const verdicts = h("table", { id: "cmp-verdicts", class: "grid" },
    h("thead", {}, h("tr", {}, head().map((c) => h("th", {}, c)))),
    h("tbody", {},
      h("tr", {}, h("th", {}, "status"), runs.map((r) => h("td", {}, statusBadge(r.exp.status)))),
      h("tr", {}, h("th", {}, "verdict"), runs.map((r) => h("td", {}, r.exp.diagnosis ? verdictBadge(r.exp.diagnosis.verdict) : "–"))),
      [...new Set(evKeys)].map((k) => h("tr", {}, h("th", {}, `evidence: ${k}`), evid.map((e) => h("td", { class: "num" }, show(e[k]))))),
      sumKeys.map((k) => h("tr", {}, h("th", {}, k), sums.map((s) => h("td", { class: "num" }, show(s[k])))))));

  clear(main,
    h("h1", {}, `Compare ${runs.length} runs`),
    h("h2", {}, "Spec: the fields that differ"), diff,
    h("h2", {}, "Training"),
    h("div", { class: "controls" }, h("label", {}, logY, " log y"), h("label", {}, " smoothing ", alpha), alphaText),
    h("div", { class: "charts" }, charts.loss.el, charts.val.el, charts.grad.el,
      h("div", {}, h("div", { class: "controls" }, h("label", {}, "temporal profile at training step ", stepPick), stepText), profile.el)),
    h("h2", {}, "Verdicts and evidence"), verdicts);
  for (const s of main.querySelectorAll(".swatch")) s.style.background = s.dataset.color;
  drawLines();
  drawProfiles();
  main.dataset.ready = "1";
}
