// Runs: a filtered, paged table; running rows carry a live progress bar, new runs appear by themselves.

import { get } from "./api.js";
import { SOURCES, STATUSES, coalesce, duration, h, progressBar, put, statusBadge, timeEl } from "./dom.js";

const PAGE = 25;
const COLUMNS = ["Run", "Job", "Status", "Progress", "Trigger", "Created", "Duration"];
const STATUS_CHOICES = [["", "any status"], ["PENDING,PROCESSING", "active"], ...STATUSES.map((s) => [s, s.toLowerCase()])];

export function runsView(ctx, query) {
  let filters = readFilters(query);
  let shown = new Map(); // run id → the run as drawn
  const jobSelect = select("filter-job", [["", "any job"]], (value) => apply({ job: value }));
  const statusSelect = select("filter-status", STATUS_CHOICES, (value) => apply({ status: value }));
  const sourceSelect = select("filter-source", [["", "any trigger"], ...SOURCES.map((s) => [s, s])], (value) => apply({ triggered_by: value }));
  const body = h("tbody", {});
  const head = h("tr", {}, COLUMNS.map((t) => h("th", { scope: "col" }, t)));
  let withNode = false; // a cluster's runs name the node that executed them: a column of their own
  const summary = h("p", { class: "muted page-info", "aria-live": "polite" });
  const previous = h("button", { type: "button", onclick: () => apply({ offset: Math.max(0, filters.offset - PAGE) }, false) }, "← Newer");
  const next = h("button", { type: "button", onclick: () => apply({ offset: filters.offset + PAGE }, false) }, "Older →");

  const element = h("section", { "aria-labelledby": "runs-title" },
    h("h1", { id: "runs-title" }, "Runs"),
    h("form", { class: "filters", role: "search", "aria-label": "Filter runs", onsubmit: (e) => e.preventDefault() },
      labelled("Job", jobSelect), labelled("Status", statusSelect), labelled("Trigger", sourceSelect)),
    h("div", { class: "table-wrap" },
      h("table", { class: "runs" },
        h("caption", { class: "visually-hidden" }, "Runs, newest first"),
        h("thead", {}, head),
        body)),
    h("nav", { class: "pager", "aria-label": "Pages" }, previous, summary, next));

  function apply(change, resetOffset = true) {
    const merged = { ...filters, ...change };
    if (resetOffset && !("offset" in change)) merged.offset = 0;
    const qs = new URLSearchParams();
    for (const key of ["job", "status", "triggered_by"]) if (merged[key]) qs.set(key, merged[key]);
    if (merged.offset) qs.set("offset", String(merged.offset));
    ctx.navigate(`#/runs${[...qs].length ? `?${qs}` : ""}`);
  }

  async function loadJobs() {
    try {
      const { jobs } = await get("/jobs");
      put(jobSelect, ...[["", "any job"], ...jobs.map((j) => [j.name, j.name])].map(([v, t]) => h("option", { value: v }, t)));
      choose(jobSelect, filters.job);
    } catch (err) {
      // The filter still works for whatever job is in the address; the table reports the error.
    }
  }

  async function refresh() {
    const data = await get("/runs", {
      job: filters.job, status: filters.status, triggered_by: filters.triggered_by, limit: PAGE, offset: filters.offset,
    });
    shown = new Map(data.runs.map((run) => [run.id, run]));
    withNode = data.runs.some((run) => run.node);
    put(head, ...[...COLUMNS, ...(withNode ? ["Node"] : [])].map((t) => h("th", { scope: "col" }, t)));
    put(body, ...(data.runs.length
      ? data.runs.map(row)
      : [h("tr", {}, h("td", { colspan: COLUMNS.length, class: "empty" }, "No runs match."))]));
    const { total, offset, has_more: hasMore } = data.pagination;
    summary.textContent = total ? `${offset + 1}–${offset + data.runs.length} of ${total}` : "0 runs";
    previous.disabled = offset === 0;
    next.disabled = !hasMore;
  }
  const refreshSoon = coalesce(() => refresh().catch(() => {}), 250);

  function row(run) {
    return h("tr", { dataset: { runId: run.id }, class: `status-row-${run.status.toLowerCase()}` },
      h("td", { "data-label": "Run" }, h("a", { href: `#/runs/${run.id}` }, `#${run.id}`)),
      h("td", { "data-label": "Job", class: "job" }, run.job),
      h("td", { "data-label": "Status" }, statusBadge(run.status)),
      h("td", { "data-label": "Progress", class: "progress-cell" }, progressCell(run)),
      h("td", { "data-label": "Trigger", class: "meta" }, run.triggered_by),
      h("td", { "data-label": "Created", class: "meta" }, timeEl(run.created_at)),
      h("td", { "data-label": "Duration", class: "meta" }, duration(run.duration_ms)),
      withNode ? h("td", { "data-label": "Node", class: "meta node" }, run.node || "") : null);
  }

  function progressCell(run) {
    if (run.status === "PROCESSING") {
      return h("div", { class: "progress" }, progressBar(run), h("span", { class: "message" }, h("span", { class: "percent" }, `${Math.round(run.progress)}%`), run.message ? ` · ${run.message}` : ""));
    }
    if (run.status === "PENDING" && run.run_after) return h("span", { class: "message muted" }, "waiting until ", timeEl(run.run_after));
    const note = run.status === "FAILED" ? run.error : run.message;
    return note ? h("span", { class: run.status === "FAILED" ? "message error-text" : "message muted" }, note) : null;
  }

  function onEvent(message) {
    if (message.type !== "status_update") return;
    const run = shown.get(message.run_id);
    if (run && run.status === message.status && message.status === "PROCESSING") {
      // A progress tick: redraw the one cell, keep the rest of the table as it is.
      Object.assign(run, { progress: message.progress, message: message.message, counts: message.counts });
      const cell = body.querySelector(`tr[data-run-id="${run.id}"] .progress-cell`);
      if (cell) put(cell, progressCell(run) || "");
      return;
    }
    if (run || (filters.offset === 0 && matches(message))) refreshSoon();
  }

  function matches(message) {
    if (filters.job && message.job !== filters.job) return false;
    if (filters.status && !filters.status.split(",").includes(message.status)) return false;
    return true;
  }

  function update(newQuery) {
    filters = readFilters(newQuery);
    syncControls();
    return refresh();
  }

  function syncControls() {
    choose(jobSelect, filters.job);
    choose(statusSelect, filters.status);
    choose(sourceSelect, filters.triggered_by);
  }

  syncControls();
  loadJobs();
  return { title: "Runs", element, refresh, onEvent, update, destroy: () => refreshSoon.cancel() };
}

function readFilters(query) {
  return {
    job: query.get("job") || "",
    status: query.get("status") || "",
    triggered_by: query.get("triggered_by") || "",
    offset: Math.max(0, parseInt(query.get("offset") || "0", 10) || 0),
  };
}

function select(id, choices, onchange) {
  return h("select", { id, onchange: (e) => onchange(e.target.value) },
    choices.map(([value, text]) => h("option", { value }, text)));
}

// Selects `value`, adding it as a choice when the address names one the list lacks.
function choose(control, value) {
  control.value = value;
  if (control.value !== value) {
    control.append(h("option", { value }, value));
    control.value = value;
  }
}

function labelled(text, control) {
  return h("div", { class: "field" }, h("label", { for: control.id }, text), control);
}
