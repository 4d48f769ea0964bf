// Sweeps: the list, and one sweep: the key numbers first, the grid points ranked (one column a
// factor, counts as "k of n"), each factor's effect, and overlays coloured by grid point.
import { LineChart } from "./charts.js";
import {
  PALETTE, TERMINAL, ago, api, clear, errorBox, h, num, pointLabel, pool, show, statusBadge, table,
} from "./lib.js";

function counts(c) {
  return Object.entries(c || {}).sort().map(([s, n]) => h("span", { class: `count status-${s}` }, `${s} ${n}`));
}

export async function sweepsPage(main) {
  const body = h("tbody", { id: "sweeps-body" });
  const more = h("button", { type: "button", id: "more" }, "Load more");
  clear(main, h("h1", {}, "Sweeps"),
    h("table", { id: "sweeps" }, h("thead", {}, h("tr", {}, ["name", "status", "runs", "by status", "grid", "seeds", "created"].map((c) => h("th", {}, c)))), body),
    h("div", { class: "pager" }, more));
  let cursor = null;
  async function load() {
    try {
      const page = await api(`/v1/sweeps?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      cursor = page.next_cursor;
      more.hidden = !cursor;
      body.append(...page.items.map((s) => h("tr", { dataset: { id: s.id } },
        h("td", {}, h("a", { href: `/ui/sweeps/${s.id}` }, s.name || s.preset || s.id.slice(0, 8))),
        h("td", {}, statusBadge(s.status)),
        h("td", { class: "num" }, s.experiments),
        h("td", {}, counts(s.counts)),
        h("td", {}, Object.entries(s.grid).map(([k, vs]) => h("div", {}, h("b", {}, k), `: ${vs.map(show).join(", ")}`))),
        h("td", {}, s.seeds.join(", ")),
        h("td", { title: s.created_at }, ago(s.created_at)))));
      if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No sweeps yet: POST /v1/sweeps (or a preset: {\"preset\": \"adding-mitigations\"}).")));
    } catch (err) {
      body.append(h("tr", {}, h("td", { colspan: 7 }, errorBox(err))));
    }
  }
  more.addEventListener("click", load);
  await load();
  main.dataset.ready = "1";
}

function kOfN(k, n) {
  return h("span", { class: "kofn" }, h("b", {}, num(k)), ` of ${num(n)}`);
}

function meanStd(stat) {
  if (!stat || stat.mean === null || stat.mean === undefined) return "–";
  return stat.std ? `${num(stat.mean, 3)} ± ${num(stat.std, 2)}` : num(stat.mean, 3);
}

export async function sweepPage(main) {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  let sweep;
  try {
    sweep = await api(`/v1/sweeps/${encodeURIComponent(id)}`);
  } catch (err) {
    clear(main, h("h1", {}, "Sweep"), errorBox(err));
    return;
  }
  const factors = Object.keys(sweep.grid);
  const points = [...sweep.points].sort((a, b) => a.rank - b.rank);
  const colourOf = new Map(points.map((p, i) => [JSON.stringify(p.params), PALETTE[i % PALETTE.length]]));
  const best = points[0];
  const bs = best?.stats || {};

  const finished = Object.entries(sweep.counts).filter(([s]) => TERMINAL.has(s)).reduce((n, [, k]) => n + k, 0);
  const keyNumbers = best ? h("section", { class: "key-numbers", id: "key-numbers" },
    h("div", {}, h("span", { class: "big" }, String(finished)), h("span", { class: "muted" }, ` of ${sweep.experiments} runs finished`)),
    h("div", {}, h("span", { class: "muted" }, "best point: "), h("b", { id: "best-point" }, pointLabel(best.params)),
      " · solved ", kOfN(bs.solved, bs.finished),
      " · validation loss ", meanStd(bs.final_val_loss),
      bs.steps_to_solve?.mean ? ` · solved at step ${num(bs.steps_to_solve.mean, 3)} on average` : "")) : null;

  const ranked = table(
    ["rank", ...factors, "solved", "diverged", "val loss (mean ± std)", "steps to solve", "verdicts", "runs"],
    points.map((p) => {
      const s = p.stats;
      return h("tr", {},
        h("td", { class: "num" }, h("span", { class: "swatch", dataset: { color: colourOf.get(JSON.stringify(p.params)) } }), p.rank),
        factors.map((f) => h("td", {}, show(p.params[f]))),
        h("td", {}, kOfN(s.solved, s.finished)),
        h("td", {}, kOfN(s.diverged, s.finished)),
        h("td", { class: "num" }, meanStd(s.final_val_loss)),
        h("td", { class: "num" }, num(s.steps_to_solve?.mean, 3)),
        h("td", {}, Object.entries(s.verdicts || {}).map(([v, n]) => h("span", { class: `badge verdict-${v}` }, `${v} ${n}`))),
        h("td", {}, p.experiments.map((e, i) => h("a", { href: `/ui/runs/${e}`, class: "chip" }, `seed ${sweep.seeds[i] ?? i}`)),
          p.experiments.length > 1 ? h("a", { href: `/ui/compare?ids=${p.experiments.join(",")}`, class: "chip" }, "compare") : null));
    }), { id: "points" });

  const effects = h("div", { id: "effects", class: "effects" }, sweep.effects.map((e) => h("div", {},
    h("h3", {}, e.factor),
    table(["value", "solved", "diverged", "mean val loss"], e.levels.map((l) => h("tr", {},
      h("td", {}, show(l.value)), h("td", {}, kOfN(l.solved, l.finished)), h("td", {}, kOfN(l.diverged, l.finished)),
      h("td", { class: "num" }, num(l.mean_final_val_loss, 3))))))));

  const charts = {
    val: new LineChart(h("div", { class: "chart", id: "sweep-val" }), { title: "validation loss, one colour a grid point", yLabel: "loss", logY: true }),
    loss: new LineChart(h("div", { class: "chart", id: "sweep-loss" }), { title: "training loss", yLabel: "loss", logY: true }),
    grad: new LineChart(h("div", { class: "chart", id: "sweep-grad" }), { title: "global gradient norm", yLabel: "L2 norm", logY: true }),
  };
  clear(main,
    h("h1", {}, sweep.name || sweep.preset || "sweep"),
    h("p", { class: "meta" }, statusBadge(sweep.status), " ", counts(sweep.counts), h("span", { class: "muted" }, ` · sweep ${sweep.id} · `),
      h("a", { href: `/v1/sweeps/${sweep.id}/report` }, "report page")),
    keyNumbers,
    h("h2", {}, "Grid points, best first"),
    h("p", { class: "muted" }, "ranked by solved fraction, then fewest diverged, then validation loss; counts are of the finished runs"),
    ranked,
    h("h2", {}, "Each factor's effect"), effects,
    h("h2", {}, "Overlays"),
    h("div", { class: "charts" }, charts.val.el, charts.loss.el, charts.grad.el));
  for (const s of main.querySelectorAll(".swatch")) s.style.background = s.dataset.color;

  const runs = points.flatMap((p) => p.experiments.map((e, i) => ({ id: e, params: p.params, seed: sweep.seeds[i] ?? i })));
  const shown = runs.slice(0, 120);
  const series = await pool(shown, 6, async (r) => {
    const base = `/v1/experiments/${r.id}`;
    const [m, g] = await Promise.all([api(`${base}/metrics?max_points=500`), api(`${base}/gradients?max_points=200`)]);
    return { ...r, m, g };
  });
  const label = (r) => `${pointLabel(r.params)}${sweep.seeds.length > 1 ? ` (seed ${r.seed})` : ""}`;
  const mk = (pick) => series.map((r) => {
    const [x, y] = pick(r);
    return { label: label(r), color: colourOf.get(JSON.stringify(r.params)), x, y };
  });
  charts.val.set(mk((r) => [r.m.validation.steps, r.m.validation.loss]));
  charts.loss.set(mk((r) => [r.m.steps, r.m.loss]));
  charts.grad.set(mk((r) => [r.g.steps, r.g.global_norm.before_clip]));
  main.dataset.ready = "1";
}
