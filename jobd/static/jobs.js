// Jobs: each job's schedule, next and last run, failure streak, and the buttons its token may use.

import { get, post } from "./api.js";
import { backfillDrafts, backfillPanel } from "./backfill.js";
import { coalesce, duration, h, put, statusBadge, timeEl } from "./dom.js";
import { ParamsError, paramForm } from "./paramform.js";

export function jobsView(ctx) {
  const list = h("div", { class: "cards", "aria-live": "polite", "aria-busy": "true" });
  const element = h("section", { "aria-labelledby": "jobs-title" },
    h("h1", { id: "jobs-title" }, "Jobs"),
    list);
  // Drafts of the params boxes survive the refreshes that rebuild the cards.
  const drafts = new Map();
  const whenDrafts = new Map(); // and so do the "run at" boxes
  const backfills = backfillDrafts(); // and the backfill forms with their previews
  const paramDrafts = new Map(); // and the fields of the forms of jobs with a params_schema,
  const paramErrors = new Map(); // and the errors a 400 put next to them

  async function refresh() {
    const { jobs } = await get("/jobs");
    // Rebuilding the cards must not take the cursor out of a params box someone is typing in.
    const focused = list.contains(document.activeElement) ? document.activeElement.id : "";
    put(list, ...(jobs.length ? jobs.map(card) : [h("p", { class: "empty" }, "No jobs are configured.")]));
    list.setAttribute("aria-busy", "false");
    if (focused) document.getElementById(focused)?.focus();
  }
  const refreshSoon = coalesce(() => refresh().catch(() => {}), 300);

  function card(job) {
    const titleId = `job-${job.name}`;
    const flags = [];
    if (job.paused) {
      // A job that paused itself (pause_after_failures) says why.
      const why = job.pause_reason ? { title: `paused after ${job.pause_reason}` } : {};
      flags.push(h("span", { class: "badge paused", ...why }, job.pause_reason ? "paused (failures)" : "paused"));
    }
    if (job.is_running) flags.push(h("span", { class: "badge status-processing" }, "running"));
    if (job.failing) flags.push(h("span", { class: "badge status-failed" }, "failing"));
    if (job.snoozed_until) {
      flags.push(h("span", { class: "badge paused snoozed", title: `notifications silenced until ${new Date(job.snoozed_until).toLocaleString()}` }, "snoozed"));
    }
    return h("article", { class: `card job${job.failing ? " failing" : ""}`, "aria-labelledby": titleId, dataset: { job: job.name } },
      h("header", { class: "card-head" },
        h("h2", { id: titleId }, job.name),
        h("span", { class: "flags" }, flags)),
      job.description ? h("p", { class: "description" }, job.description) : null,
      h("dl", { class: "facts" },
        fact("Schedule", schedule(job)),
        fact("Next run", nextRun(job)),
        fact("Last run", lastRun(job)),
        fact("Failures", failures(job)),
        job.skipped_fires ? fact("Skipped", skipped(job)) : null,
        job.active_runs.length ? fact("Active", job.active_runs.map((id) => h("a", { href: `#/runs/${id}` }, `#${id}`)).flatMap((a, i) => (i ? [", ", a] : [a]))) : null),
      actions(job));
  }

  function schedule(job) {
    if (!job.schedule) return h("span", { class: "muted" }, "manual only");
    return [
      h("span", {}, job.schedule_description || job.schedule), " ",
      h("code", { class: "cron", title: "as written in the configuration" }, job.schedule),
      h("span", { class: "muted" }, ` · ${job.timezone}`),
    ];
  }

  function nextRun(job) {
    if (job.paused) return h("span", { class: "muted" }, "none while paused");
    if (!job.next_run_at) return h("span", { class: "muted" }, "—");
    const local = (job.next_run_at_local || "").replace("T", " ");
    return [timeEl(job.next_run_at), h("span", { class: "muted" }, ` · ${local.slice(0, 19)} ${job.timezone}`)];
  }

  function lastRun(job) {
    const run = job.last_run;
    if (!run) return h("span", { class: "muted" }, "never");
    return [
      h("a", { href: `#/runs/${run.id}` }, `#${run.id}`), " ", statusBadge(run.status), " ",
      h("span", { class: "muted" }, duration(run.duration_ms), " · ", timeEl(run.finished_at || run.created_at)),
    ];
  }

  function failures(job) {
    const text = `${job.consecutive_failures} in a row (alert at ${job.alert_after_failures})`;
    return h("span", { class: job.failing ? "failures failing" : job.consecutive_failures ? "failures" : "muted" }, text);
  }

  // Fires the overlap policy skipped because a run was still in progress, or its calendars excluded.
  function skipped(job) {
    const fires = job.skipped_fires === 1 ? "1 fire" : `${job.skipped_fires} fires`;
    const why = job.last_skip_reason === "excluded" ? "last excluded by a calendar" : `overlap ${job.overlap}`;
    return h("span", { class: "skipped", dataset: { count: String(job.skipped_fires) } },
      `${fires} (${why}), last `, timeEl(job.last_skipped_at));
  }

  function actions(job) {
    if (!ctx.can("trigger")) return null;
    const paramsId = `params-${job.name}`;
    const textarea = h("textarea", {
      id: paramsId, rows: 3, spellcheck: "false", placeholder: '{"key": "value"}',
      oninput: () => drafts.set(job.name, textarea.value),
    });
    textarea.value = drafts.get(job.name) || "";
    const runAt = runAtInput(job);
    // A job that declares its parameters gets a form made from their schema instead of the JSON box.
    const form = job.params_schema ? paramForm(job, paramDrafts, paramErrors) : null;
    const typing = form && ([...paramDrafts.keys()].some((key) => key.startsWith(`${job.name}\u0000`)) || paramErrors.has(job.name));
    const details = h("details", { class: "params", open: drafts.get(job.name) || whenDrafts.get(job.name) || typing ? true : undefined },
      h("summary", {}, "Parameters"),
      form ? form.element : [h("label", { for: paramsId }, "Params as a JSON object"), textarea],
      h("label", { for: runAt.id }, "Run at (optional, this browser's time)"),
      runAt);
    const buttons = [h("button", { type: "button", class: "primary", onclick: () => trigger(job, textarea, runAt, form) }, "Trigger")];
    // Pausing stops the schedule; a job without one has nothing to pause.
    if (ctx.can("admin") && (job.schedule || job.paused)) {
      buttons.push(job.paused
        ? h("button", { type: "button", onclick: () => setPaused(job, false) }, "Resume")
        : h("button", { type: "button", onclick: () => setPaused(job, true) }, "Pause"));
    }
    // Snoozing silences the job's notifications (docs/notifications.md#snoozing).
    if (ctx.can("admin")) {
      buttons.push(job.snoozed_until
        ? h("button", { type: "button", onclick: () => snooze(job, null) }, "Unsnooze")
        : h("button", { type: "button", onclick: () => snooze(job, new Date(Date.now() + 3600_000).toISOString()) }, "Snooze 1 h"));
    }
    return h("div", { class: "actions" }, details, h("div", { class: "buttons" }, buttons),
      job.schedule ? backfillPanel(ctx, job, backfills, refreshSoon) : null);
  }

  // A one-off run later: the API's run_at, from a local date and time (sent as UTC).
  function runAtInput(job) {
    const input = h("input", {
      id: `run-at-${job.name}`, type: "datetime-local", step: "1", class: "run-at",
      oninput: () => whenDrafts.set(job.name, input.value),
    });
    input.value = whenDrafts.get(job.name) || "";
    return input;
  }

  async function trigger(job, textarea, runAt, form) {
    const body = { triggered_by: "manual" };
    if (runAt.value) {
      const when = new Date(runAt.value); // a datetime-local value is read in the browser's zone
      if (Number.isNaN(when.getTime())) {
        ctx.notify(`"${runAt.value}" is not a date and time`, "error");
        return;
      }
      body.run_at = when.toISOString();
    }
    let params = {};
    const raw = form ? "" : textarea.value.trim();
    if (form) {
      try {
        params = form.read();
      } catch (err) {
        if (!(err instanceof ParamsError)) throw err;
        form.showErrors([{ param: err.param, message: err.field }]);
        form.focus(err.param);
        ctx.notify(`Params for ${job.name}: ${err.message}`, "error");
        return;
      }
    } else if (raw) {
      try {
        params = JSON.parse(raw);
      } catch (err) {
        ctx.notify(`Params for ${job.name} are not valid JSON: ${err.message}`, "error");
        textarea.focus();
        return;
      }
      if (params === null || typeof params !== "object" || Array.isArray(params)) {
        ctx.notify("Params must be a JSON object", "error");
        return;
      }
    }
    try {
      const { run } = await post(`/jobs/${encodeURIComponent(job.name)}/trigger`, { ...body, params });
      const link = h("a", { href: `#/runs/${run.id}` }, `#${run.id}`);
      ctx.notify(run.run_after
        ? [`Scheduled run `, link, ` of ${job.name} for `, timeEl(run.run_after)]
        : [`Started run `, link, ` of ${job.name}`], "ok");
      runAt.value = "";
      whenDrafts.delete(job.name);
      form?.accepted();
      refreshSoon();
    } catch (err) {
      if (form && err.problem && Array.isArray(err.problem.errors) && form.showErrors(err.problem.errors)) {
        form.focus(err.problem.errors[0].param);
      }
      ctx.notify(`Could not trigger ${job.name}: ${err.message}`, "error");
    }
  }

  async function setPaused(job, paused) {
    try {
      await post(`/jobs/${encodeURIComponent(job.name)}/${paused ? "pause" : "resume"}`);
      ctx.notify(`${job.name} ${paused ? "paused" : "resumed"}`, "ok");
      await refresh();
    } catch (err) {
      ctx.notify(`Could not ${paused ? "pause" : "resume"} ${job.name}: ${err.message}`, "error");
    }
  }

  async function snooze(job, until) {
    try {
      await post(`/jobs/${encodeURIComponent(job.name)}/snooze`, { until });
      ctx.notify(until ? `${job.name}: notifications silenced for an hour` : `${job.name}: notifications on again`, "ok");
      await refresh();
    } catch (err) {
      ctx.notify(`Could not ${until ? "snooze" : "unsnooze"} ${job.name}: ${err.message}`, "error");
    }
  }

  // Progress ticks do not change a card; a run changing state does (last run, running, failures),
  // and so does a skipped fire (the skip count).
  const statusOf = new Map();
  function onEvent(message) {
    if (message.type === "fire_skipped") {
      refreshSoon();
      return;
    }
    if (message.type !== "status_update" || statusOf.get(message.run_id) === message.status) return;
    statusOf.set(message.run_id, message.status);
    refreshSoon();
  }

  return { title: "Jobs", element, refresh, onEvent, destroy: () => refreshSoon.cancel() };
}

function fact(term, ...value) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, value));
}
