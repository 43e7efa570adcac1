// Overview: the queue now, and completed/failed runs per day over the last 30 days.

import { get } from "./api.js";
import { bucketRuns, dailyChart, emptyDays } from "./chart.js";
import { STATUSES, TERMINAL, coalesce, h, put, statusBadge } from "./dom.js";

const DAYS = 30;
const TIMELINE_MAX_AGE_MS = 15000;
const FALLBACK_PAGE = 500;
const FALLBACK_MAX_PAGES = 20;
// Nodes send no events of their own (heartbeats are rows in the database): the panel reads
// GET /api/v1/nodes this often while the overview is shown.
const NODES_EVERY_MS = 5000;

export function overviewView(ctx) {
  const tiles = h("div", { class: "tiles", "aria-live": "polite" });
  const totals = h("div", { class: "totals" });
  const rate = h("p", { class: "rate" });
  const chartBox = h("figure", { class: "chart-box" });
  const nodesBody = h("tbody", {});
  const nodesPanel = h("section", { class: "nodes", "aria-labelledby": "nodes-title", hidden: true },
    h("h2", { id: "nodes-title" }, "Nodes"),
    h("div", { class: "table-wrap" },
      h("table", { class: "nodes-table" },
        h("caption", { class: "visually-hidden" }, "The nodes of the cluster"),
        h("thead", {}, h("tr", {}, ["Node", "Host", "PID", "State", "Running", "Heartbeat"].map((t) => h("th", { scope: "col" }, t)))),
        nodesBody)));
  const groupsBody = h("tbody", {});
  const groupsPanel = h("section", { class: "groups", "aria-labelledby": "groups-title", hidden: true },
    h("h2", { id: "groups-title" }, "Concurrency groups"),
    h("div", { class: "table-wrap" },
      h("table", { class: "groups-table" },
        h("caption", { class: "visually-hidden" }, "Shared concurrency groups: runs of their jobs"),
        h("thead", {}, h("tr", {}, ["Group", "Running / limit", "Waiting", "Jobs"].map((t) => h("th", { scope: "col" }, t)))),
        groupsBody)));
  const element = h("section", { "aria-labelledby": "overview-title" },
    h("h1", { id: "overview-title" }, "Overview"),
    h("section", { "aria-labelledby": "queue-title" }, h("h2", { id: "queue-title" }, "Queue"), tiles),
    groupsPanel,
    nodesPanel,
    h("section", { "aria-labelledby": "totals-title" }, h("h2", { id: "totals-title" }, "Runs by status, all time"), totals),
    h("section", { "aria-labelledby": "history-title" },
      h("h2", { id: "history-title" }, `Last ${DAYS} days`), rate, chartBox));
  let timelineAt = 0;

  let lastQueue = null;
  function renderQueue(q) {
    lastQueue = q;
    const workers = q.workers || {};
    const oldest = q.oldest_pending_age_s;
    put(tiles, 
      tile("Pending", q.pending ?? q.counts?.PENDING ?? 0, "pending"),
      tile("Processing", q.processing ?? q.counts?.PROCESSING ?? 0, "processing"),
      tile("Workers busy", `${workers.busy ?? 0} / ${workers.total ?? "?"}`, "workers"),
      tile("Oldest pending", oldest === null || oldest === undefined ? "—" : `${Math.round(oldest)} s`, "oldest"));
    renderGroups(q.groups || []);
    const counts = q.counts || {};
    put(totals, h("ul", { class: "status-totals" },
      STATUSES.map((status) => h("li", {}, statusBadge(status), h("span", { class: "count", dataset: { count: status } }, String(counts[status] ?? 0))))));
  }

  function renderGroups(groups) {
    groupsPanel.hidden = !groups.length;
    put(groupsBody, ...groups.map((g) => h("tr", { dataset: { group: g.name } },
      h("th", { scope: "row" }, g.name),
      h("td", { dataset: { running: g.name } }, `${g.running} / ${g.limit}`),
      h("td", { dataset: { waiting: g.name } }, String(g.waiting)),
      h("td", { class: "meta" }, g.jobs.join(", ")))));
  }

  async function loadTimeline() {
    let days;
    if (ctx.session.features.includes("stats")) {
      const stats = await get("/stats", { days: DAYS });
      days = fill(stats.timeline || []);
    } else {
      days = bucketRuns(await finishedRuns(), DAYS);
    }
    timelineAt = Date.now();
    const completed = days.reduce((n, d) => n + d.completed, 0);
    const failed = days.reduce((n, d) => n + d.failed, 0);
    put(rate, completed + failed
      ? [h("strong", { class: "rate-value" }, `${((100 * completed) / (completed + failed)).toFixed(1)}%`),
        ` success rate · ${completed} completed, ${failed} failed`]
      : h("span", { class: "muted" }, "No finished runs in this period."));
    shownDays = days;
    drawChart();
  }

  let shownDays = null;
  function drawChart() {
    if (!shownDays) return;
    // The figure's inner width: its padding is 0.75rem on each side.
    const width = chartBox.clientWidth - 24;
    put(chartBox, dailyChart(shownDays, width > 0 ? width : 720),
      h("figcaption", {},
        h("span", { class: "legend" }, h("span", { class: "key key-completed" }), "completed (and partial)"),
        h("span", { class: "legend" }, h("span", { class: "key key-failed" }), "failed"),
        h("span", {}, "per UTC day")));
  }
  const redraw = coalesce(drawChart, 150);
  window.addEventListener("resize", redraw);

  // Shown in a cluster only; a single node (or a daemon without the route) keeps the page as it was.
  async function loadNodes() {
    let data;
    try {
      data = await get("/nodes");
    } catch (err) {
      nodesPanel.hidden = true;
      return;
    }
    nodesPanel.hidden = !data.cluster;
    if (!data.cluster) return;
    put(nodesBody, ...data.nodes.map((node) => h("tr", { dataset: { node: node.name, alive: String(node.alive) } },
      h("td", { class: "node-name" }, node.name, node.name === data.node ? h("span", { class: "muted" }, " · serving this page") : null),
      h("td", {}, node.host),
      h("td", {}, String(node.pid)),
      h("td", {}, h("span", { class: `badge ${node.alive ? "status-completed" : "status-failed"}` }, node.alive ? "alive" : "dead")),
      h("td", { dataset: { running: node.name } }, String(node.running)),
      h("td", { class: "meta" }, `${node.heartbeat_age_s.toFixed(1)} s ago`))));
  }
  const nodesTimer = setInterval(() => loadNodes(), NODES_EVERY_MS);

  async function refresh() {
    loadNodes();
    const queue = get("/queue").then(renderQueue);
    const timeline = Date.now() - timelineAt > TIMELINE_MAX_AGE_MS ? loadTimeline() : null;
    await queue;
    await timeline;
  }
  const queueSoon = coalesce(() => get("/queue").then(renderQueue).catch(() => {}), 300);
  const timelineSoon = coalesce(() => loadTimeline().catch(() => {}), 2000);

  let sawSummary = false;
  function onEvent(message) {
    if (message.type === "summary") {
      sawSummary = true;
      // The summary carries the queue figures; the oldest pending age stays from the last read.
      if (message.workers && message.counts && lastQueue) {
        renderQueue({
          ...lastQueue,
          pending: message.queue?.pending ?? message.counts.PENDING,
          processing: message.queue?.processing ?? message.counts.PROCESSING,
          workers: message.workers,
          counts: message.counts,
        });
        if (lastQueue.groups?.length) queueSoon(); // the summary does not carry the groups
      } else {
        queueSoon();
      }
    } else if (message.type === "status_update") {
      if (!sawSummary) queueSoon();
      if (TERMINAL.has(message.status)) timelineSoon();
    }
  }

  return {
    title: "Overview",
    element,
    refresh,
    onEvent,
    destroy: () => {
      clearInterval(nodesTimer);
      window.removeEventListener("resize", redraw);
      redraw.cancel();
      queueSoon.cancel();
      timelineSoon.cancel();
    },
  };
}

function tile(label, value, key) {
  return h("div", { class: `tile tile-${key}` }, h("span", { class: "tile-value", dataset: { tile: key } }, String(value)), h("span", { class: "tile-label" }, label));
}

// The stats endpoint may leave out days without runs; the chart wants every day.
function fill(timeline) {
  const days = emptyDays(DAYS);
  const byDate = new Map(timeline.map((d) => [d.date, d]));
  return days.map((d) => {
    const found = byDate.get(d.date);
    return found ? { date: d.date, total: found.total ?? 0, completed: found.completed ?? 0, failed: found.failed ?? 0 } : d;
  });
}

// Without a stats endpoint the finished runs of the period are read page by page (bounded).
async function finishedRuns() {
  const since = new Date(Date.now() - DAYS * 86400000);
  since.setUTCHours(0, 0, 0, 0);
  const runs = [];
  for (let page = 0; page < FALLBACK_MAX_PAGES; page += 1) {
    const data = await get("/runs", {
      status: "COMPLETED,PARTIAL,FAILED", since: since.toISOString(), limit: FALLBACK_PAGE, offset: page * FALLBACK_PAGE,
    });
    runs.push(...data.runs);
    if (!data.pagination.has_more) break;
  }
  return runs;
}
