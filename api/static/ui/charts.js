// Charts: uPlot (vendored, /static/vendor/uplot-*) for every line chart; the temporal heatmap
// is a canvas of cells coloured by log10 of the value (uPlot has no heatmap).
import { h, num } from "./lib.js";

const uPlot = window.uPlot;

// exponential moving average, the weight of the past `alpha` (0: none); nulls pass through
export function smooth(values, alpha) {
  if (!alpha) return values;
  let last = null;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return v;
    last = last === null ? v : alpha * last + (1 - alpha) * v;
    return last;
  });
}

function clean(values, logY) {
  return values.map((v) => (typeof v !== "number" || !Number.isFinite(v) || (logY && v <= 0) ? null : v));
}

function width(el) {
  return Math.max(320, Math.floor(el.getBoundingClientRect().width || el.parentElement?.clientWidth || 600));
}

// steps and time steps are whole numbers: no tick at 0.5
const INT_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000, 100000];

// A line chart of several series with their own steps, joined on one x axis.
// series: [{label, color, x: [...], y: [...], dash, width}]
export class LineChart {
  constructor(el, { title, xLabel = "training step", yLabel = "", logY = false, height = 260, intX = true } = {}) {
    this.el = el;
    this.opts = { title, xLabel, yLabel, logY, height, intX };
    this.series = [];
    this.plot = null;
    this.resize = () => this.plot && this.plot.setSize({ width: width(this.el), height: this.opts.height });
    window.addEventListener("resize", this.resize);
  }

  set(series, changes = {}) {
    this.series = series;
    const rebuild = this.plot === null || "logY" in changes || series.length !== this.plot.series.length - 1;
    Object.assign(this.opts, changes);
    const data = this.data();
    if (rebuild) this.build(data);
    else this.plot.setData(data);
  }

  data() {
    const tables = this.series.map((s) => [s.x, clean(s.y, this.opts.logY)]);
    if (!tables.length) return [[]];
    if (tables.length === 1) return tables[0];
    return uPlot.join(tables);
  }

  build(data) {
    if (this.plot) this.plot.destroy();
    this.el.replaceChildren();
    const { title, xLabel, yLabel, logY, height, intX } = this.opts;
    const opts = {
      title, width: width(this.el), height,
      scales: { x: { time: false }, y: logY ? { distr: 3 } : { auto: true } },
      axes: [
        { label: xLabel, stroke: "#57606a", grid: { stroke: "#eaeef2" }, incrs: intX ? INT_INCRS : undefined },
        { label: yLabel, stroke: "#57606a", grid: { stroke: "#eaeef2" }, size: 70,
          values: (u, vals) => vals.map((v) => num(v, 3)) },
      ],
      series: [
        { label: xLabel, value: (u, v) => (v === null ? "–" : num(v)) },
        ...this.series.map((s) => ({
          label: s.label, stroke: s.color, width: s.width || 1.5, spanGaps: true,
          dash: s.dash, points: { show: false }, value: (u, v) => (v === null ? "–" : num(v, 4)),
        })),
      ],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    };
    this.plot = new uPlot(opts, data, this.el);
    this.el.dataset.series = String(this.series.length);
    this.el.dataset.points = String(this.series.reduce((n, s) => n + s.x.length, 0));
  }
}

// viridis, 9 stops: dark (small gradient) to yellow (large)
const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [110, 206, 88], [253, 231, 37],
];
function colour(f) {
  const x = Math.min(1, Math.max(0, f)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const t = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + t * (VIRIDIS[i + 1][k] - c)));
}

// The temporal profile as a heatmap: x = time step t, y = training step (latest at the top),
// colour = log10 ||dL/dh_t||. Hover names the cell.
export class Heatmap {
  constructor(el) {
    this.el = el;
    this.canvas = h("canvas", { class: "heat" });
    this.tip = h("div", { class: "heat-tip muted" }, "hover a cell");
    this.scale = h("div", { class: "heat-scale" });
    el.replaceChildren(
      h("div", { class: "heat-wrap" },
        h("div", { class: "heat-y muted" }, "training step ↑"), this.canvas),
      h("div", { class: "heat-x muted" }, "time step t →  (the loss is read at the last one)"),
      this.scale, this.tip);
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
  }

  set(steps, rows) {
    this.steps = steps;
    this.rows = rows;
    const logs = rows.map((r) => r.map((v) => (v > 0 && Number.isFinite(v) ? Math.log10(v) : null)));
    const flat = logs.flat().filter((v) => v !== null);
    this.lo = flat.length ? Math.min(...flat) : 0;
    this.hi = flat.length ? Math.max(...flat) : 1;
    const n = rows.length;
    const T = n ? rows[0].length : 0;
    this.el.dataset.rows = String(n);
    if (!n || !T) {
      this.tip.textContent = "no temporal profile yet";
      return;
    }
    this.tip.textContent = "hover a cell for its value";
    this.canvas.width = T;
    this.canvas.height = n;
    const ctx = this.canvas.getContext("2d");
    const img = ctx.createImageData(T, n);
    const span = this.hi - this.lo || 1;
    for (let i = 0; i < n; i++) {
      const y = n - 1 - i; // the latest step on top
      for (let t = 0; t < T; t++) {
        const v = logs[i][t];
        const [r, g, b] = v === null ? [255, 255, 255] : colour((v - this.lo) / span);
        const o = 4 * (y * T + t);
        img.data[o] = r; img.data[o + 1] = g; img.data[o + 2] = b; img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    this.scale.replaceChildren(
      h("span", {}, `1e${this.lo.toFixed(1)}`), h("span", { class: "ramp" }), h("span", {}, `1e${this.hi.toFixed(1)}`),
      h("span", { class: "muted" }, " ||dL/dh_t||, log colour scale; white: zero or not finite"));
  }

  hover(e) {
    if (!this.rows || !this.rows.length) return;
    const box = this.canvas.getBoundingClientRect();
    const T = this.rows[0].length;
    const n = this.rows.length;
    const t = Math.min(T - 1, Math.max(0, Math.floor(((e.clientX - box.left) / box.width) * T)));
    const y = Math.min(n - 1, Math.max(0, Math.floor(((e.clientY - box.top) / box.height) * n)));
    const i = n - 1 - y;
    this.tip.textContent = `training step ${this.steps[i]}, t = ${t} (${T - 1 - t} back from the end): ||dL/dh_t|| = ${num(this.rows[i][t], 3)}`;
  }
}
