// Runs: every experiment of the signed-in owner, filtered on the server, sorted in the page,
// a page at a time; active rows refresh themselves; select 2-20 to compare.
import {
  TERMINAL, ago, api, clear, errorBox, expName, h, num, progressBar, seqLen, sizeBars,
  statusBadge, verdictBadge,
} from "./lib.js";

const FILTERS = [
  ["status", ["queued", "running", "succeeded", "diverged", "failed", "cancelled"]],
  ["verdict", ["healthy", "vanishing", "exploding", "diverged", "inconclusive"]],
  ["cell", ["rnn", "lstm", "gru"]],
  ["task", ["adding", "copy", "digits"]],
];
const TEXT_FILTERS = [["name", "name contains"], ["tag", "tag"], ["sweep_id", "sweep id"]];

const COLUMNS = [
  ["name", "name", (e) => expName(e).toLowerCase()],
  ["status", "status", (e) => e.status],
  ["cell", "cell", (e) => e.spec?.model?.cell],
  ["task", "task", (e) => e.spec?.task?.name],
  ["T", "T", (e) => seqLen(e.spec) ?? -1],
  ["verdict", "verdict", (e) => e.diagnosis?.verdict || ""],
  ["solved", "solved at", (e) => e.summary?.solved_at_step ?? Infinity],
  ["val", "val loss", (e) => (typeof e.summary?.final_val_loss === "number" ? e.summary.final_val_loss : Infinity)],
  ["steps", "steps", (e) => e.progress?.step ?? 0],
  ["created", "created", (e) => e.created_at],
  ["tags", "tags", (e) => (e.tags || []).join(",")],
];

export async function runsPage(main) {
  const params = new URLSearchParams(location.search);
  const state = {
    rows: [], cursor: null, selected: new Set(), sort: params.get("sort") || "created",
    desc: params.get("order") !== "asc",
  };
  const controls = {};
  const filterBar = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); reload(); } });
  for (const [name, values] of FILTERS) {
    const sel = h("select", { name, id: `f-${name}`, onchange: () => reload() },
      h("option", { value: "" }, `any ${name}`), values.map((v) => h("option", { value: v }, v)));
    sel.value = params.get(name) || "";
    controls[name] = sel;
    filterBar.append(sel);
  }
  for (const [name, placeholder] of TEXT_FILTERS) {
    const input = h("input", { name, id: `f-${name}`, placeholder, size: name === "sweep_id" ? 12 : 14 });
    input.value = params.get(name) || "";
    input.addEventListener("change", () => reload());
    controls[name] = input;
    filterBar.append(input);
  }
  const compareBtn = h("button", { type: "button", id: "compare", disabled: true, onclick: () => {
    location.href = `/ui/compare?ids=${[...state.selected].join(",")}`;
  } }, "Compare selected");
  filterBar.append(h("button", { type: "submit" }, "Filter"), compareBtn);
  const status = h("p", { class: "muted", id: "runs-status" });
  const tbody = h("tbody", { id: "runs-body" });
  const headRow = h("tr", {}, h("th", {}, ""), COLUMNS.map(([key, label]) =>
    h("th", { class: "sortable", dataset: { key }, onclick: () => {
      state.desc = state.sort === key ? !state.desc : key === "created";
      state.sort = key;
      syncUrl();
      render();
    } }, label)));
  const more = h("button", { type: "button", id: "more", onclick: () => load(false) }, "Load more");
  clear(main,
    h("h1", {}, "Runs"),
    filterBar,
    h("table", { class: "runs", id: "runs" }, h("thead", {}, headRow), tbody),
    h("div", { class: "pager" }, more, status));

  function query() {
    const q = new URLSearchParams();
    for (const name of Object.keys(controls)) if (controls[name].value.trim()) q.set(name, controls[name].value.trim());
    return q;
  }
  function syncUrl() {
    const q = query();
    if (state.sort !== "created") q.set("sort", state.sort);
    if (!state.desc) q.set("order", "asc");
    history.replaceState(null, "", q.toString() ? `/?${q}` : "/");
  }

  async function load(first) {
    const q = query();
    q.set("limit", "50");
    if (!first && state.cursor) q.set("cursor", state.cursor);
    try {
      const page = await api(`/v1/experiments?${q}`);
      state.rows = first ? page.items : [...state.rows, ...page.items];
      state.cursor = page.next_cursor;
      render();
    } catch (err) {
      clear(tbody, h("tr", {}, h("td", { colspan: COLUMNS.length + 1 }, errorBox(err))));
    }
  }
  function reload() {
    state.selected.clear();
    syncUrl();
    return load(true);
  }

  function render() {
    const col = COLUMNS.find(([k]) => k === state.sort) || COLUMNS[9];
    const rows = [...state.rows].sort((a, b) => {
      const x = col[2](a), y = col[2](b);
      const c = x < y ? -1 : x > y ? 1 : 0;
      return state.desc ? -c : c;
    });
    for (const th of headRow.querySelectorAll("th.sortable")) {
      th.classList.toggle("sorted", th.dataset.key === state.sort);
      th.classList.toggle("asc", th.dataset.key === state.sort && !state.desc);
    }
    clear(tbody, rows.map(row));
    if (!rows.length) tbody.append(h("tr", {}, h("td", { colspan: COLUMNS.length + 1, class: "muted" },
      "No runs match. Submit one: POST /v1/experiments, or gradlab submit spec.json")));
    sizeBars(tbody);
    more.hidden = !state.cursor;
    status.textContent = `${rows.length} run${rows.length === 1 ? "" : "s"} shown${state.cursor ? " (more on the server)" : ""}; sorting applies to the runs shown`;
    compareBtn.disabled = state.selected.size < 2 || state.selected.size > 20;
    compareBtn.textContent = `Compare selected (${state.selected.size})`;
  }

  function row(e) {
    const box = h("input", { type: "checkbox", checked: state.selected.has(e.id), onchange: (ev) => {
      if (ev.target.checked) state.selected.add(e.id); else state.selected.delete(e.id);
      render();
    } });
    const s = e.summary || {};
    return h("tr", { dataset: { id: e.id, status: e.status } },
      h("td", {}, box),
      h("td", {}, h("a", { href: `/ui/runs/${e.id}` }, expName(e)),
        e.sweep_id ? h("a", { class: "chip", href: `/ui/sweeps/${e.sweep_id}`, title: "its sweep" }, "sweep") : null),
      h("td", {}, statusBadge(e.status), TERMINAL.has(e.status) ? null : progressBar(e)),
      h("td", {}, e.spec?.model?.cell),
      h("td", {}, e.spec?.task?.name),
      h("td", { class: "num" }, seqLen(e.spec)),
      h("td", {}, e.diagnosis ? verdictBadge(e.diagnosis.verdict) : ""),
      h("td", { class: "num" }, s.solved_at_step !== undefined && s.solved_at_step !== null
        ? `step ${num(s.solved_at_step)}` : (e.summary ? "no" : "")),
      h("td", { class: "num" }, e.summary ? num(s.final_val_loss) : ""),
      h("td", { class: "num" }, `${num(e.progress?.step)} / ${num(e.progress?.total_steps)}`),
      h("td", { title: e.created_at }, ago(e.created_at)),
      h("td", {}, (e.tags || []).map((t) => h("span", { class: "tag" }, t))));
  }

  // live: active rows every 2 s (one lean GET each), new runs every 10 s
  let ticks = 0;
  setInterval(async () => {
    ticks++;
    const active = state.rows.filter((e) => !TERMINAL.has(e.status));
    if (ticks % 5 === 0) {
      const q = query();
      q.set("limit", "50");
      const page = await api(`/v1/experiments?${q}`).catch(() => null);
      if (page) {
        const known = new Set(state.rows.map((e) => e.id));
        const fresh = new Map(page.items.map((e) => [e.id, e]));
        state.rows = [...page.items.filter((e) => !known.has(e.id)),
          ...state.rows.map((e) => fresh.get(e.id) || e)];
        render();
      }
      return;
    }
    if (!active.length) return;
    const updated = await Promise.all(active.slice(0, 20).map((e) => api(`/v1/experiments/${e.id}`).catch(() => e)));
    const byId = new Map(updated.map((e) => [e.id, e]));
    state.rows = state.rows.map((e) => byId.get(e.id) || e);
    render();
  }, 2000);

  await load(true);
}
