// One run: its state, times, attempts, chain, counts, result, error, and its log following live while it runs.

import { ApiError, get, post, request } from "./api.js";
import { TERMINAL, absolute, duration, h, json, progressBar, put, statusBadge, timeEl } from "./dom.js";
import { openStream } from "./live.js";

const POLL_MS = 1000;
// While polling, the run's stream is tried again every this many rounds: the page goes back to
// following live by itself once streams get through again (a restarted jobd, a fixed proxy).
const STREAM_RETRY_ROUNDS = 5;
const MAX_CHAIN = 20;

export function runView(ctx, runId) {
  let run = null;
  let stream = null;
  let pollTimer = null;
  let destroyed = false;
  let logLines = [];
  let pendingLines = null; // log lines that arrived from the stream before the first fetch answered

  const heading = h("h1", { id: "run-title" }, `Run #${runId}`);
  const statusSlot = h("span", { class: "run-status" });
  const live = h("div", { class: "live-progress", "aria-live": "polite" });
  const buttons = h("div", { class: "buttons" });
  const facts = h("dl", { class: "facts wide" });
  const attempts = h("div", { class: "attempts" });
  const outcome = h("div", { class: "outcome" });
  const chain = h("section", { "aria-labelledby": "run-chain", class: "run-chain", hidden: true });
  const logView = h("pre", { class: "log", tabindex: "0", "aria-label": `Log of run ${runId}` });
  const followNote = h("span", { class: "muted follow-note" });
  const element = h("section", { "aria-labelledby": "run-title", class: "run" },
    h("p", { class: "crumbs" }, h("a", { href: "#/runs" }, "← Runs")),
    h("header", { class: "run-head" }, heading, statusSlot, buttons),
    live,
    h("div", { class: "run-grid" },
      h("section", { "aria-labelledby": "run-details" }, h("h2", { id: "run-details" }, "Details"), facts),
      h("section", { "aria-labelledby": "run-attempts" }, h("h2", { id: "run-attempts" }, "Attempts"), attempts)),
    chain,
    outcome,
    h("section", { "aria-labelledby": "run-log", class: "log-section" },
      h("div", { class: "log-head" },
        h("h2", { id: "run-log" }, "Log"), followNote,
        h("button", { type: "button", onclick: loadFullLog }, "Load the whole log")),
      logView));

  async function load() {
    // While streaming, lines arriving during this fetch are held back and merged after it.
    if (stream && pendingLines === null) pendingLines = [];
    let data;
    try {
      data = await get(`/runs/${runId}`);
    } catch (err) {
      if (pendingLines) {
        logLines.push(...pendingLines);
        pendingLines = null;
      }
      throw err;
    }
    if (destroyed) return;
    run = data.run;
    logLines = splitLog(run.log_tail || "");
    if (pendingLines) {
      appendUnseen(pendingLines);
      pendingLines = null;
    }
    render();
    renderLog();
  }

  function render() {
    document.title = `Run #${run.id} · ${run.job} · jobd`;
    heading.textContent = `Run #${run.id} · ${run.job}`;
    put(statusSlot, statusBadge(run.status));
    put(live, ...(run.status === "PROCESSING"
      ? [progressBar(run, "progress"), h("span", { class: "message" }, h("span", { class: "percent" }, `${Math.round(run.progress)}%`), run.message ? ` · ${run.message}` : "")]
      : run.status === "PENDING" ? [h("span", { class: "muted" }, run.run_after ? ["waiting until ", timeEl(run.run_after)] : "waiting for a worker")] : []));
    renderButtons();
    const c = run.counts || {};
    put(facts, 
      fact("Job", h("a", { href: `#/runs?job=${encodeURIComponent(run.job)}` }, run.job)),
      fact("Triggered by", run.triggered_by),
      run.node ? fact("Node", run.node) : null,
      fact("Params", Object.keys(run.params || {}).length ? h("code", {}, JSON.stringify(run.params)) : h("span", { class: "muted" }, "none")),
      fact("Created", when(run.created_at)),
      run.scheduled_for ? fact("Scheduled for", when(run.scheduled_for)) : null,
      fact("Started", when(run.started_at)),
      fact("Finished", when(run.finished_at)),
      fact("Duration", run.duration_ms === null && run.status === "PROCESSING" ? "running" : duration(run.duration_ms)),
      fact("Counts", [c.total ?? null, c.success ?? 0, c.failed ?? 0, c.skipped ?? 0]
        .map((n, i) => (n === null ? null : `${n} ${["total", "ok", "failed", "skipped"][i]}`)) // no total: not known
        .filter(Boolean).join(" · ")),
      run.exit_code !== null && run.exit_code !== undefined ? fact("Exit code", String(run.exit_code)) : null);
    put(outcome, 
      run.error ? h("section", { class: "error-box", "aria-labelledby": "run-error" }, h("h2", { id: "run-error" }, "Error"), h("p", {}, run.error)) : "",
      run.result !== null && run.result !== undefined
        ? h("section", { "aria-labelledby": "run-result" }, h("h2", { id: "run-result" }, "Result"), h("pre", { class: "result" }, json(run.result)))
        : "");
    followNote.textContent = TERMINAL.has(run.status) ? "" : stream ? "following live" : "following (polling)";
    renderChain();
  }

  // The run whose end triggered this one, and the runs this one's end triggered (or why not).
  function renderChain() {
    const children = run.children || [];
    chain.hidden = !run.parent_run_id && !children.length;
    if (chain.hidden) return;
    const child = (c) => h("li", {},
      c.id === null
        ? [h("strong", {}, c.job), " ", h("span", { class: "muted" }, `skipped: ${c.reason}`)]
        : [h("a", { href: `#/runs/${c.id}` }, `#${c.id}`), " ", c.job, " ",
          c.status ? statusBadge(c.status) : h("span", { class: "muted" }, "(no longer kept)")]);
    put(chain,
      h("h2", { id: "run-chain" }, "Chain"),
      run.parent_run_id
        ? h("p", { class: "chain-parent" }, "Triggered by the end of run ",
          h("a", { href: `#/runs/${run.parent_run_id}` }, `#${run.parent_run_id}`))
        : null,
      children.length
        ? [h("p", {}, "Its end triggered:"), h("ul", { class: "chain-children" }, children.map(child))]
        : null);
  }

  function renderButtons() {
    const list = [];
    if (ctx.can("trigger") && !TERMINAL.has(run.status)) {
      list.push(h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel"));
    }
    if (ctx.can("trigger") && TERMINAL.has(run.status)) {
      list.push(h("button", { type: "button", class: "primary", onclick: retry }, "Retry"));
    }
    put(buttons, ...list);
  }

  async function renderAttempts() {
    const earlier = [];
    let cursor = run.retry_of;
    while (cursor && earlier.length < MAX_CHAIN) {
      try {
        const { run: previous } = await get(`/runs/${cursor}`);
        earlier.unshift(previous);
        cursor = previous.retry_of;
      } catch (err) {
        earlier.unshift({ id: cursor, missing: true });
        break;
      }
    }
    let later = [];
    if (TERMINAL.has(run.status)) {
      try {
        const data = await get("/runs", { job: run.job, triggered_by: "retry", since: run.created_at, limit: 100 });
        later = data.runs.filter((r) => r.retry_of === run.id);
      } catch (err) {
        later = [];
      }
    }
    if (destroyed) return;
    const item = (r, note) => h("li", {},
      r.missing ? `#${r.id} (no longer kept)` : [h("a", { href: `#/runs/${r.id}` }, `#${r.id}`), " ", statusBadge(r.status), " ",
        h("span", { class: "muted" }, `attempt ${r.attempt}`), r.error ? h("span", { class: "error-text" }, ` · ${r.error}`) : ""],
      note ? h("span", { class: "muted" }, ` ${note}`) : "");
    put(attempts, 
      h("p", {}, `Attempt ${run.attempt} of ${run.max_attempts}`),
      earlier.length || later.length
        ? h("ol", { class: "chain" },
          earlier.map((r) => item(r, "")),
          h("li", { "aria-current": "true" }, h("strong", {}, `#${run.id}`), " ", statusBadge(run.status), h("span", { class: "muted" }, " this run")),
          later.map((r) => item(r, "retries this run")))
        : h("p", { class: "muted" }, run.triggered_by === "retry" ? "" : "No other attempts."));
  }

  function renderLog() {
    const atBottom = logView.scrollTop + logView.clientHeight >= logView.scrollHeight - 24;
    logView.textContent = logLines.length ? logLines.join("\n") : "(no output yet)";
    if (atBottom) logView.scrollTop = logView.scrollHeight;
  }

  function appendUnseen(lines) {
    // The fetched tail may already end with the first of these lines: skip the overlap.
    let overlap = Math.min(lines.length, logLines.length);
    while (overlap > 0 && !sameLines(logLines.slice(-overlap), lines.slice(0, overlap))) overlap -= 1;
    logLines.push(...lines.slice(overlap));
  }

  async function follow() {
    if (destroyed || TERMINAL.has(run.status)) return;
    const features = ctx.session.features;
    const streamable = features.includes("run_events") && (!ctx.session.auth || features.includes("tickets"));
    if (streamable) {
      pendingLines = [];
      try {
        stream = await openStream(`/runs/${runId}/events`, { log: "1" }, { onMessage, onClose }, { auth: ctx.session.auth });
      } catch (err) {
        pendingLines = null;
        stream = null;
      }
      if (stream) {
        if (destroyed) {
          stream.close();
          return;
        }
        // Read the state once more: what happened before the stream opened is in this answer.
        await load().catch(() => {});
        return;
      }
    }
    poll();
  }

  function onMessage(message) {
    if (message.run_id !== undefined && message.run_id !== null && message.run_id !== runId) return;
    if (message.type === "log") {
      const lines = splitLog(message.line);
      if (pendingLines) pendingLines.push(...lines);
      else {
        logLines.push(...lines);
        renderLog();
      }
    } else if (message.type === "status_update" && run) {
      const before = run.status;
      Object.assign(run, pick(message));
      render();
      if (TERMINAL.has(run.status)) {
        stream?.close();
        stream = null;
        finished();
      } else if (before !== run.status) {
        load().catch(() => {});
      }
    }
  }

  function onClose() {
    stream = null;
    if (!destroyed && run && !TERMINAL.has(run.status)) poll();
  }

  let pollRounds = 0;
  function poll() {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(async () => {
      try {
        await load();
      } catch (err) {
        // Offline for a moment: the next round tries again; the header shows the connection.
      }
      if (destroyed) return;
      pollRounds += 1;
      if (TERMINAL.has(run.status)) finished();
      else if (pollRounds % STREAM_RETRY_ROUNDS === 0) follow(); // polls on if the stream still fails
      else poll();
    }, POLL_MS);
  }

  // The authoritative final state and log, and the attempts now that the outcome is known.
  async function finished() {
    render();
    try {
      await load();
    } catch (err) {
      return;
    }
    renderAttempts();
  }

  async function cancel() {
    try {
      const data = await post(`/runs/${runId}/cancel`);
      Object.assign(run, data.run);
      render();
      ctx.notify(`Run #${runId} cancelled`, "ok");
    } catch (err) {
      ctx.notify(`Could not cancel run #${runId}: ${err.message}`, "error");
    }
  }

  async function retry() {
    try {
      const { run: next } = await post(`/runs/${runId}/retry`);
      ctx.notify([`Retrying as run `, h("a", { href: `#/runs/${next.id}` }, `#${next.id}`)], "ok");
      ctx.navigate(`#/runs/${next.id}`);
    } catch (err) {
      ctx.notify(`Could not retry run #${runId}: ${err.message}`, "error");
    }
  }

  async function loadFullLog() {
    try {
      const text = await request("GET", `/runs/${runId}/log`, { text: true });
      logLines = splitLog(text);
      renderLog();
    } catch (err) {
      ctx.notify(`Could not load the log: ${err.message}`, "error");
    }
  }

  let started = false;
  async function refresh() {
    if (!started) {
      started = true;
      try {
        await load();
      } catch (err) {
        started = false;
        throw err;
      }
      renderAttempts();
      follow();
      return;
    }
    if (run === null || stream || TERMINAL.has(run.status)) return;
    await load();
  }

  // Firehose messages also carry this run; they matter when its own stream is not open.
  function onEvent(message) {
    const child = message.type === "status_update" && run ? (run.children || []).find((c) => c.id === message.run_id) : null;
    if (child && child.status !== message.status) {
      child.status = message.status; // a child's state, live where the firehose reaches this page
      renderChain();
    }
    if (stream || !run || message.type !== "status_update" || message.run_id !== runId) return;
    onMessage(message);
  }

  function destroy() {
    destroyed = true;
    clearTimeout(pollTimer);
    stream?.close();
    stream = null;
  }

  return {
    title: `Run #${runId}`,
    element,
    refresh: () => refresh().catch((err) => {
      if (err instanceof ApiError && err.status === 404) {
        put(element, h("h1", {}, `Run #${runId}`), h("p", { class: "error-box" }, `There is no run #${runId}.`));
        return;
      }
      throw err;
    }),
    onEvent,
    destroy,
  };
}

function pick(message) {
  const out = {};
  for (const key of ["status", "progress", "message", "counts", "error", "result", "updated_at", "attempt"]) {
    if (key in message) out[key] = message[key];
  }
  return out;
}

function splitLog(text) {
  if (!text) return [];
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines;
}

function sameLines(a, b) {
  return a.length === b.length && a.every((line, i) => line === b[i]);
}

function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return [h("span", {}, absolute(iso)), " ", h("span", { class: "muted" }, "(", timeEl(iso), ")")];
}

function fact(term, ...value) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, value));
}
