// Backfill from a job's card: runs for a scheduled job's past fire times (POST …/backfill), with
// a preview (dry_run) that lists the times, those the job's calendars exclude marked.
//
// From and to are wall times in the job's time zone (that of its schedule), sent with the offset
// that zone has then. A time the fall-back night repeats is the first of the two; a time a
// spring-forward gap skips is read with the offset before the gap.

import { post } from "./api.js";
import { h, put } from "./dom.js";

const DAY_MS = 86400000;

// What is typed and shown survives the refreshes that rebuild the cards: job name → draft.
export function backfillDrafts() {
  return new Map();
}

export function backfillPanel(ctx, job, drafts, onDone) {
  const draft = drafts.get(job.name) || { from: "", to: "", maxRuns: "100", open: false, result: null, error: "" };
  drafts.set(job.name, draft);
  const id = (what) => `backfill-${what}-${job.name}`;
  const field = (what, attrs) => {
    const input = h("input", { id: id(what), ...attrs, oninput: () => { draft[what] = input.value; } });
    input.value = draft[what];
    return input;
  };
  const from = field("from", { type: "datetime-local", step: "1", required: true });
  const to = field("to", { type: "datetime-local", step: "1", required: true });
  const maxRuns = field("maxRuns", { type: "number", min: "1", max: "1000", step: "1", inputmode: "numeric" });
  const result = h("div", { class: "backfill-result", id: id("result"), "aria-live": "polite" });
  showResult(result, draft);

  async function send(dryRun) {
    let body;
    try {
      body = {
        from: instant(from.value, job.timezone, "From"),
        to: instant(to.value, job.timezone, "To"),
        max_runs: Number(maxRuns.value || 100),
        dry_run: dryRun,
      };
    } catch (err) {
      draft.error = err.message;
      draft.result = null;
      showResult(result, draft);
      return;
    }
    try {
      draft.result = await post(`/jobs/${encodeURIComponent(job.name)}/backfill`, body);
      draft.error = "";
      if (!dryRun) {
        const made = draft.result.runs.length;
        ctx.notify(`Backfill of ${job.name}: ${made} run(s) created`, "ok");
        onDone();
      }
    } catch (err) {
      const where = err.problem && err.problem.field ? ` (${err.problem.field})` : "";
      draft.error = `${err.message}${where}`;
      draft.result = null;
    }
    showResult(result, draft);
  }

  const details = h("details", { class: "backfill", open: draft.open || undefined },
    h("summary", {}, "Backfill"),
    h("p", { class: "muted hint" }, `Runs for past fire times, read in ${job.timezone}.`),
    h("div", { class: "backfill-fields" },
      h("label", { for: from.id }, `From (${job.timezone}, included)`), from,
      h("label", { for: to.id }, `To (${job.timezone}, not included)`), to,
      h("label", { for: maxRuns.id }, "Max runs (1–1000)"), maxRuns),
    h("div", { class: "buttons" },
      h("button", { type: "button", id: id("preview"), onclick: () => send(true) }, "Preview"),
      h("button", { type: "button", id: id("run"), onclick: () => send(false) }, "Backfill")),
    result);
  details.addEventListener("toggle", () => { draft.open = details.open; });
  return details;
}

function showResult(box, draft) {
  if (draft.error) {
    put(box, h("p", { class: "error-box", role: "alert" }, draft.error));
    return;
  }
  const answer = draft.result;
  if (!answer) {
    put(box);
    return;
  }
  const excluded = answer.excluded || [];
  const items = [
    ...answer.fire_times.map((at, i) => ({ at, local: answer.fire_times_local[i], why: null })),
    ...excluded.map((item) => ({ at: item.at, local: item.at_local, why: item.excluded_by })),
  ].sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
  const head = answer.dry_run
    ? `${answer.fire_times.length} fire time(s) in ${answer.timezone}` + (excluded.length ? `, ${excluded.length} excluded` : "")
    : `${answer.runs.length} run(s) created` + (answer.existing.length ? `, ${answer.existing.length} already had one` : "");
  const created = new Map((answer.runs || []).map((run) => [run.scheduled_for, run.id]));
  put(box,
    h("p", { class: "backfill-summary" }, head),
    h("ol", { class: "backfill-times" }, items.map((item) => {
      const runId = created.get(item.at);
      return h("li", { class: item.why ? "excluded" : "", dataset: { at: item.at } },
        h("time", { datetime: item.at }, item.local.replace("T", " ")),
        item.why ? h("span", { class: "mark" }, ` excluded (${item.why})`) : null,
        runId ? [" ", h("a", { href: `#/runs/${runId}` }, `#${runId}`)] : null);
    })),
    answer.excluded_truncated ? h("p", { class: "muted" }, "More excluded times are not listed.") : null);
}

// A datetime-local value (wall time) in `zone` → an ISO time with that zone's offset then.
export function instant(value, zone, label) {
  const wall = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(value || "");
  if (!wall) throw new Error(`${label}: enter a date and time`);
  const [y, mo, d, hh, mi, ss] = wall.slice(1).map((part) => Number(part || 0));
  const asUtc = Date.UTC(y, mo - 1, d, hh, mi, ss);
  // The zone's offsets a day either side cover both sides of any change; keep those that give
  // back the wall time, and the earliest of them.
  const fits = [offsetAt(asUtc - DAY_MS, zone), offsetAt(asUtc + DAY_MS, zone)]
    .map((offset) => asUtc - offset)
    .filter((t) => asUtc === t + offsetAt(t, zone));
  const at = fits.length ? Math.min(...fits) : asUtc - offsetAt(asUtc - DAY_MS, zone);
  return new Date(at).toISOString();
}

const formats = new Map();

// The zone's offset from UTC (ms) at the instant `t`.
function offsetAt(t, zone) {
  let format = formats.get(zone);
  if (!format) {
    format = new Intl.DateTimeFormat("en-US", {
      timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
    formats.set(zone, format);
  }
  const parts = Object.fromEntries(format.formatToParts(new Date(t)).map((p) => [p.type, p.value]));
  const wall = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
  return wall - Math.floor(t / 1000) * 1000;
}
