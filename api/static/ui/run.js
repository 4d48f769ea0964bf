// A run: the report, live while it runs (the SSE stream brings each flushed batch of loss and
// gradient norm; validation and the temporal profile are re-read as batches arrive), the spec,
// events, webhooks, exports; cancel, edit name/tags/note, delete.
import { Heatmap, LineChart } from "./charts.js";
import {
  EVIDENCE_FIRST, PALETTE, SUMMARY_FIRST, TERMINAL, api, clear, duration, errorBox, expName,
  flatten, h, kv, num, ordered, progressBar, show, sizeBars, statusBadge, table, verdictBadge,
} from "./lib.js";

const GRAD_POINTS = 300;

export async function runPage(main) {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const base = `/v1/experiments/${encodeURIComponent(id)}`;
  let exp;
  try {
    exp = await api(base);
  } catch (err) {
    clear(main, h("h1", {}, "Run"), errorBox(err));
    return;
  }
  const el = {
    head: h("section", { id: "run-head" }),
    actions: h("section", { id: "actions", class: "actions" }),
    diagnosis: h("section", { id: "diagnosis" }),
    loss: h("div", { class: "chart", id: "chart-loss" }),
    grads: h("div", { class: "chart", id: "chart-grads" }),
    heat: h("div", { id: "heatmap" }),
    profile: h("div", { class: "chart", id: "chart-profile" }),
    profileControls: h("div", { class: "controls" }),
    summary: h("section", { id: "summary" }),
    events: h("section", { id: "events" }),
    webhooks: h("section", { id: "webhooks" }),
    spec: h("section", { id: "spec" }),
    exports: h("section", { id: "exports" }),
  };
  const logToggle = h("input", { type: "checkbox", id: "log-loss", checked: true, onchange: () => drawLoss({ logY: logToggle.checked }) });
  clear(main, el.head, el.actions, h("div", { class: "two" }, el.diagnosis, el.summary),
    h("section", { class: "charts" },
      h("div", {}, h("div", { class: "controls" }, h("label", {}, logToggle, " log y")), el.loss),
      h("div", {}, el.grads)),
    h("section", { id: "temporal" }, h("h2", {}, "Gradient through time"),
      h("p", { class: "muted" }, "||dL/dh_t||, layer 0 unless chosen: a gradient that fades to the left vanishes going back through time."),
      h("div", { class: "charts" }, el.heat, h("div", {}, el.profileControls, el.profile))),
    el.events, el.webhooks, h("div", { class: "two" }, el.spec, el.exports));

  const lossChart = new LineChart(el.loss, { title: "loss", yLabel: "loss", logY: true });
  const gradChart = new LineChart(el.grads, { title: "gradient norms (before clipping)", yLabel: "L2 norm", logY: true });
  const profileChart = new LineChart(el.profile, { title: "profile at a training step", xLabel: "time step t", yLabel: "||dL/dh_t||", logY: true });
  const heatmap = new Heatmap(el.heat);

  const live = { loss: { steps: [], values: [] }, grad: { steps: [], values: [] } };
  let validation = null; // the latest validation point the stream brought
  let soFar = null; // the stream's verdict so far (provisional) while the run goes
  let metrics = null;
  let grads = null;
  let layer = 0;
  let profileRow = -1;
  let followLatest = true; // the profile shows the newest step until the slider is moved

  function drawHead() {
    const s = exp.summary || {};
    const running = exp.status === "running" && exp.started_at;
    let eta = null;
    if (running && exp.progress.step > 0) {
      const spent = (Date.now() - new Date(exp.started_at).getTime()) / 1000;
      eta = (spent / exp.progress.step) * (exp.progress.total_steps - exp.progress.step);
    }
    clear(el.head,
      h("h1", { id: "run-name" }, expName(exp)),
      h("p", { class: "meta" }, statusBadge(exp.status), " ",
        exp.diagnosis ? verdictBadge(exp.diagnosis.verdict) : null, " ",
        TERMINAL.has(exp.status) ? null : progressBar(exp),
        h("span", { class: "muted", id: "progress-text" },
          ` step ${num(exp.progress.step)} of ${num(exp.progress.total_steps)}`,
          eta !== null ? ` · about ${duration(eta)} left` : "",
          ` · attempt ${exp.attempt}`,
          validation && !TERMINAL.has(exp.status)
            ? ` · validation loss ${num(validation.loss, 4)}${validation.accuracy !== null ? `, accuracy ${num(validation.accuracy, 3)}` : ""} (step ${num(validation.step)})`
            : "",
          s.steps_per_second ? ` · ${num(s.steps_per_second, 3)} steps/s` : ""),
        exp.sweep_id ? h("span", {}, " · ", h("a", { href: `/ui/sweeps/${exp.sweep_id}` }, "its sweep")) : null),
      h("p", { class: "muted" }, h("code", {}, exp.id), " · ",
        (exp.tags || []).map((t) => h("span", { class: "tag" }, t)),
        exp.note ? h("span", { id: "note-text" }, " · ", exp.note) : null),
      exp.error ? h("p", { class: "error" }, `${exp.error.type || "error"}: ${exp.error.message || show(exp.error)}`) : null);
    sizeBars(el.head);
  }

  function drawActions() {
    const name = h("input", { id: "edit-name", value: exp.name || "", size: 30, placeholder: "name" });
    const tags = h("input", { id: "edit-tags", value: (exp.tags || []).join(", "), size: 30, placeholder: "tags, comma separated" });
    const note = h("textarea", { id: "edit-note", rows: 2, cols: 50, placeholder: "a note" });
    note.value = exp.note || "";
    const msg = h("span", { class: "muted", id: "edit-msg" });
    const save = h("button", { type: "submit", id: "save" }, "Save");
    const form = h("form", { class: "edit", onsubmit: async (e) => {
      e.preventDefault();
      save.disabled = true;
      try {
        exp = await api(base, { method: "PATCH", body: {
          name: name.value, note: note.value,
          tags: tags.value.split(",").map((t) => t.trim()).filter(Boolean),
        } });
        msg.textContent = "saved";
        drawHead();
      } catch (err) {
        msg.textContent = err.message;
      } finally {
        save.disabled = false;
      }
    } }, name, tags, note, save, msg);
    const buttons = [];
    if (!TERMINAL.has(exp.status)) {
      buttons.push(h("button", { type: "button", id: "cancel", onclick: async () => {
        try { exp = await api(`${base}/cancel`, { method: "POST" }); drawHead(); drawActions(); } catch (err) { msg.textContent = err.message; }
      } }, "Cancel run"));
    } else {
      buttons.push(h("button", { type: "button", id: "delete", class: "danger", onclick: async () => {
        if (!confirm(`Delete ${expName(exp)} and all its traces? This cannot be undone.`)) return;
        try { await api(base, { method: "DELETE" }); location.href = "/"; } catch (err) { msg.textContent = err.message; }
      } }, "Delete run"));
    }
    clear(el.actions, h("details", {}, h("summary", {}, "Edit name, tags, note"), form), buttons);
  }

  function drawDiagnosis() {
    const d = exp.diagnosis;
    if (!d && soFar && !TERMINAL.has(exp.status)) {
      clear(el.diagnosis, h("h2", {}, "Diagnosis"),
        h("p", { id: "verdict-so-far" }, "so far (provisional, from what is stored up to step ", num(soFar.step), "): ",
          verdictBadge(soFar.verdict), " ", soFar.reason || ""),
        h("p", { class: "muted" }, "the final diagnosis, with the outcome, when the run ends"));
      return;
    }
    if (!d) {
      clear(el.diagnosis, h("h2", {}, "Diagnosis"), h("p", { class: "muted" }, TERMINAL.has(exp.status) ? "none" : "when the run ends"));
      return;
    }
    const ev = d.evidence || {};
    const flat = flatten(ev);
    const keys = ordered(flat, EVIDENCE_FIRST.flatMap((k) => Object.keys(flat).filter((f) => f === k || f.startsWith(`${k}.`))));
    clear(el.diagnosis, h("h2", {}, "Diagnosis"),
      h("p", {}, verdictBadge(d.verdict)),
      kv(keys.filter((k) => !k.startsWith("thresholds.")).map((k) => [k, show(flat[k])]), { id: "evidence" }),
      h("p", { class: "muted" }, "thresholds: ", Object.entries(ev.thresholds || {}).map(([k, v]) => `${k} ${num(v)}`).join(", ")),
      (d.suggestions || []).length ? h("div", {}, h("p", {}, "Mitigations that fit:"),
        h("ul", {}, d.suggestions.map((s) => h("li", {}, h("b", {}, s.mitigation), `: ${s.why} `, h("code", {}, JSON.stringify(s.set)))))) : null);
  }

  function drawLoss(changes = {}) {
    const lossSteps = live.loss.steps.length >= (metrics?.steps.length || 0) ? live.loss : { steps: metrics.steps, values: metrics.loss };
    const series = [{ label: "training", color: PALETTE[0], x: lossSteps.steps, y: lossSteps.values }];
    if (metrics?.validation?.steps?.length) {
      series.push({ label: "validation", color: PALETTE[1], x: metrics.validation.steps, y: metrics.validation.loss, width: 2 });
    }
    const baseline = exp.summary?.baseline_loss;
    if (typeof baseline === "number" && series[0].x.length) {
      const xs = series[0].x;
      series.push({ label: "baseline", color: "#8c959f", x: [xs[0], xs[xs.length - 1]], y: [baseline, baseline], dash: [6, 4] });
    }
    lossChart.set(series, changes);
  }

  function drawGrads() {
    const g = live.grad.steps.length >= (grads?.steps.length || 0) ? live.grad : { steps: grads.steps, values: grads.global_norm.before_clip };
    const series = [{ label: "global, before clip", color: "#24292f", x: g.steps, y: g.values, width: 2 }];
    if (grads) {
      if (grads.global_norm.after_clip.some((v) => v !== null)) {
        series.push({ label: "global, after clip", color: "#8c959f", x: grads.steps, y: grads.global_norm.after_clip, dash: [4, 3] });
      }
      Object.entries(grads.parameters).forEach(([name, values], i) => {
        series.push({ label: name, color: PALETTE[(i + 1) % PALETTE.length], x: grads.steps, y: values, width: 1 });
      });
    }
    gradChart.set(series);
  }

  function drawTemporal() {
    const layers = grads?.temporal?.layers || [];
    const L = layers.find((l) => l.layer === layer) || layers[0];
    if (!L) {
      heatmap.set([], []);
      clear(el.profileControls, h("span", { class: "muted" }, "no temporal profile (yet, or the instrument is off)"));
      return;
    }
    heatmap.set(L.steps, L.values);
    if (followLatest || profileRow < 0 || profileRow >= L.steps.length) profileRow = L.steps.length - 1;
    const slider = h("input", { type: "range", id: "profile-step", min: 0, max: L.steps.length - 1, value: profileRow, oninput: (e) => {
      profileRow = Number(e.target.value);
      followLatest = profileRow === L.steps.length - 1;
      drawProfile(L);
    } });
    const layerPick = layers.length > 1 ? h("select", { onchange: (e) => { layer = Number(e.target.value); drawTemporal(); } },
      layers.map((l) => h("option", { value: l.layer, selected: l.layer === L.layer }, `layer ${l.layer}`))) : null;
    clear(el.profileControls, h("label", {}, "training step ", slider), h("span", { id: "profile-at" }), layerPick);
    drawProfile(L);
  }

  function drawProfile(L) {
    const row = L.values[profileRow] || [];
    el.profileControls.querySelector("#profile-at").textContent = ` ${L.steps[profileRow]}`;
    const series = [{ label: `step ${L.steps[profileRow]}`, color: PALETTE[0], x: row.map((_, t) => t), y: row, width: 2 }];
    if (profileRow !== 0 && L.values[0]) series.push({ label: `step ${L.steps[0]} (first)`, color: "#8c959f", x: L.values[0].map((_, t) => t), y: L.values[0], dash: [4, 3] });
    profileChart.set(series);
  }

  function drawTables() {
    const s = exp.summary || {};
    clear(el.summary, h("h2", {}, "Summary"), exp.summary
      ? kv(ordered(s, SUMMARY_FIRST).map((k) => [k, show(s[k])]), { id: "summary-table" })
      : h("p", { class: "muted" }, "when the run ends"));
    const flat = flatten(exp.spec);
    clear(el.spec, h("h2", {}, "Spec"), kv(Object.keys(flat).map((k) => [k, show(flat[k])]), { id: "spec-table" }),
      kv([["created", exp.created_at], ["started", exp.started_at || "–"], ["finished", exp.finished_at || "–"]].map(([k, v]) => [k, v])));
    const links = [
      ["report page (one HTML file)", `${base}/report`],
      ["CSV: every scalar series", `${base}/export.csv`],
      ["CSV: the temporal profiles and other vector series (step, name, index, value)", `${base}/export/vectors.csv`],
      ["TensorBoard run (.tar.gz)", `${base}/export/tensorboard`],
      ["temporal heatmap (PNG)", `${base}/plots/temporal.png`],
      ["loss (SVG)", `${base}/plots/loss.svg`],
      ["JSON: the run", base], ["JSON: metrics", `${base}/metrics`], ["JSON: gradients", `${base}/gradients`],
      ["JSON: instruments", `${base}/instruments`],
    ];
    clear(el.exports, h("h2", {}, "Exports"), h("ul", { class: "links" }, links.map(([t, href]) => h("li", {}, h("a", { href }, t)))));
  }

  async function drawEvents() {
    const [events, hooks] = await Promise.all([api(`${base}/events`), api(`${base}/webhooks`)]);
    clear(el.events, h("h2", {}, "Events"), events.items.length
      ? table(["step", "kind", "attempt", "detail"], events.items.map((e) => h("tr", {}, h("td", {}, num(e.step)), h("td", {}, e.kind), h("td", {}, e.attempt), h("td", {}, show(e.detail)))), { id: "events-table" })
      : h("p", { class: "muted" }, "none: no NaN/Inf, halt or retry"));
    clear(el.webhooks, h("h2", {}, "Webhooks"), hooks.items.length
      ? table(["event", "status", "attempts", "last", "url"], hooks.items.map((d) => h("tr", {}, h("td", {}, d.event), h("td", {}, d.status), h("td", {}, d.attempts), h("td", {}, d.last_status_code ?? d.last_error ?? "–"), h("td", {}, d.url))))
      : h("p", { class: "muted" }, exp.spec?.notify ? "none sent yet" : "none: the spec has no notify.url"));
  }

  async function refreshTraces() {
    [metrics, grads] = await Promise.all([
      api(`${base}/metrics?max_points=2000`),
      api(`${base}/gradients?max_points=${GRAD_POINTS}`),
    ]);
    drawLoss();
    drawGrads();
    drawTemporal();
  }

  // re-read the heavier traces at most every 3 s while batches arrive
  let pending = null;
  let lastRead = 0;
  function soon() {
    if (pending) return;
    const wait = Math.max(0, 3000 - (Date.now() - lastRead));
    pending = setTimeout(async () => {
      pending = null;
      lastRead = Date.now();
      await refreshTraces().catch(() => {});
    }, wait);
  }

  drawHead();
  drawActions();
  drawDiagnosis();
  drawTables();
  await refreshTraces();
  await drawEvents();
  main.dataset.ready = "1";

  if (!TERMINAL.has(exp.status)) {
    const stream = new EventSource(`${base}/stream`);
    main.dataset.live = "1";
    stream.addEventListener("status", (e) => {
      const m = JSON.parse(e.data);
      if (m.attempt !== exp.attempt) { live.loss = { steps: [], values: [] }; live.grad = { steps: [], values: [] }; validation = soFar = null; }
      exp = { ...exp, status: m.status, attempt: m.attempt };
      drawHead();
    });
    stream.addEventListener("progress", (e) => {
      const m = JSON.parse(e.data);
      exp = { ...exp, progress: { step: m.step, total_steps: m.total_steps } };
      if (exp.status === "queued") exp.status = "running";
      drawHead();
    });
    stream.addEventListener("batch", (e) => {
      const m = JSON.parse(e.data);
      for (const [key, name] of [["loss", "loss"], ["grad", "grad_norm_total"]]) {
        if (m[name]) {
          live[key].steps.push(...m[name].steps);
          live[key].values.push(...m[name].values);
        }
      }
      main.dataset.batches = String(Number(main.dataset.batches || 0) + 1);
      drawLoss();
      drawGrads();
      soon();
    });
    stream.addEventListener("validation", (e) => {
      validation = JSON.parse(e.data);
      drawHead();
    });
    stream.addEventListener("verdict", (e) => {
      soFar = JSON.parse(e.data);
      main.dataset.verdictSoFar = soFar.verdict;
      drawDiagnosis();
    });
    stream.addEventListener("end", async (e) => {
      stream.close();
      exp = JSON.parse(e.data);
      main.dataset.live = "0";
      drawHead(); drawActions(); drawDiagnosis(); drawTables();
      await refreshTraces();
      await drawEvents();
      main.dataset.ended = exp.status;
    });
  }
}
