// The per-day chart of completed and failed runs, drawn as inline SVG (no library, no canvas).

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

// A round number at or above `n`, so the axis reads 0, 5, 10 rather than 0, 7, 14.
function niceMax(n) {
  if (n <= 5) return 5;
  const magnitude = 10 ** Math.floor(Math.log10(n));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * magnitude >= n) return step * magnitude;
  }
  return 10 * magnitude;
}

// days: [{date: "YYYY-MM-DD", completed, failed}], oldest first. `width` is the pixels available, so
// that labels keep their size from a phone to a wide screen.
export function dailyChart(days, width = 720) {
  width = Math.max(280, Math.round(width));
  const height = Math.round(Math.min(240, Math.max(160, width * 0.3)));
  const left = 36;
  const bottom = 24;
  const top = 8;
  const plotH = height - top - bottom;
  const plotW = width - left - 8;
  const slot = plotW / Math.max(days.length, 1);
  const barW = Math.max(2, slot * 0.7);
  const max = niceMax(Math.max(0, ...days.map((d) => d.completed + d.failed)));
  const y = (value) => top + plotH - (value / max) * plotH;
  const completedTotal = days.reduce((sum, d) => sum + d.completed, 0);
  const failedTotal = days.reduce((sum, d) => sum + d.failed, 0);

  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": `Runs per day over the last ${days.length} days: ${completedTotal} completed, ${failedTotal} failed`,
  });
  for (const tick of Number.isInteger(max / 2) ? [0, max / 2, max] : [0, max]) {
    svg.append(s("line", { x1: left, x2: width - 8, y1: y(tick), y2: y(tick), class: "grid" }));
    svg.append(s("text", { x: left - 6, y: y(tick) + 4, class: "axis", "text-anchor": "end" }, String(tick)));
  }
  days.forEach((day, i) => {
    const x = left + i * slot + (slot - barW) / 2;
    const group = s("g", { class: "day" });
    group.append(s("title", {}, `${day.date}: ${day.completed} completed, ${day.failed} failed`));
    const okTop = y(day.completed);
    if (day.completed) {
      group.append(s("rect", { x, y: okTop, width: barW, height: y(0) - okTop, class: "bar-completed" }));
    }
    if (day.failed) {
      const failTop = y(day.completed + day.failed);
      group.append(s("rect", { x, y: failTop, width: barW, height: okTop - failTop, class: "bar-failed" }));
    }
    // An invisible full-height target so the tooltip works on empty days too.
    group.append(s("rect", { x: left + i * slot, y: top, width: slot, height: plotH, class: "hit" }));
    svg.append(group);
    const last = days.length - 1;
    const every = width < 500 ? 14 : 7;
    if ((i % every === 0 && last - i >= every / 2) || i === last) {
      const anchor = i === last ? "end" : i === 0 ? "start" : "middle";
      const at = i === last ? x + barW : i === 0 ? x : x + barW / 2;
      svg.append(s("text", { x: at, y: height - 6, class: "axis", "text-anchor": anchor }, day.date.slice(5)));
    }
  });
  return svg;
}

function utcDate(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

// The last `count` UTC dates, oldest first, each with zero runs: the frame both data sources fill.
export function emptyDays(count, now = Date.now()) {
  const days = [];
  for (let i = count - 1; i >= 0; i -= 1) {
    days.push({ date: utcDate(now - i * 86400000), total: 0, completed: 0, failed: 0 });
  }
  return days;
}

export function bucketRuns(runs, count, now = Date.now()) {
  const days = emptyDays(count, now);
  const index = new Map(days.map((d, i) => [d.date, i]));
  for (const run of runs) {
    const i = index.get(utcDate(new Date(run.finished_at || run.created_at).getTime()));
    if (i === undefined) continue;
    days[i].total += 1;
    if (run.status === "FAILED") days[i].failed += 1;
    else if (run.status === "COMPLETED" || run.status === "PARTIAL") days[i].completed += 1;
  }
  return days;
}
