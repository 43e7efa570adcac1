// jobd.js: follow a jobd run live from a browser. An ES module with no dependencies.
//
//   import { watchRun } from "/static/jobd.js";
//   const stop = watchRun(42, {
//     onStatusChange: (update, previous) => ...,  // PENDING → PROCESSING → COMPLETED ...
//     onProgress: (update) => ...,                // progress, message or counts changed
//     onComplete: (update) => ...,                // the terminal status_update, once
//     onError: (error) => ...,                    // error.fatal: watching has stopped
//     pollInterval: 2000,                         // ms, when polling instead of streaming
//     baseUrl: "",                                // another origin needs [server] cors_origins
//     token: null,                                // a jobd token: used for tickets, never put in a URL
//   });
//   stop();                                       // closes the stream or stops polling
//
// It listens to GET /api/v1/runs/{id}/events with EventSource, reconnects with backoff (resuming
// from the last event id), and falls back to polling GET /api/v1/runs/{id} when the stream keeps
// failing while the API answers (a proxy that breaks streams, a stream limit). With a token it
// mints a short-lived ticket (POST /api/v1/tickets) for each connection, and a new one when the
// last has expired, so the long-lived token only ever travels in a header.

const TERMINAL = new Set(["COMPLETED", "PARTIAL", "FAILED", "CANCELLED"]);
const FAILURES_BEFORE_POLLING = 3;
const TICKET_MARGIN_MS = 10000;

export function watchRun(runId, options = {}) {
  const {
    onStatusChange,
    onProgress,
    onComplete,
    onError,
    pollInterval = 2000,
    baseUrl = "",
    token = null,
    maxBackoff = 30000,
  } = options;
  const base = baseUrl.replace(/\/+$/, "");
  const streamPath = `/api/v1/runs/${encodeURIComponent(runId)}/events`;
  const runPath = `/api/v1/runs/${encodeURIComponent(runId)}`;
  const aborter = new AbortController();
  let stopped = false;
  let source = null;
  let timer = null;
  let failures = 0; // consecutive failed attempts, for the backoff
  let silentErrors = 0; // stream errors since the last message
  let lastEventId = null;
  let last = null;
  let ticket = null;

  const call = (fn, ...args) => {
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (error) {
      setTimeout(() => { throw error; }); // a callback's bug must not stop the watch
    }
  };

  const fail = (message, { fatal = false, status = null } = {}) => {
    const error = new Error(message);
    error.fatal = fatal;
    error.status = status;
    call(onError, error);
    if (fatal) stop();
  };

  const backoff = () => {
    const delay = Math.min(maxBackoff, 500 * 2 ** Math.min(failures - 1, 16));
    return delay * (0.5 + Math.random() / 2);
  };

  const later = (fn, ms) => {
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(fn, ms);
  };

  const headers = (extra = {}) => {
    const h = { Accept: "application/json", ...extra };
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  };

  const closeSource = () => {
    if (source) {
      source.onmessage = source.onerror = source.onopen = null;
      source.close();
      source = null;
    }
  };

  function stop() {
    stopped = true;
    closeSource();
    clearTimeout(timer);
    aborter.abort();
  }

  function deliver(update) {
    if (stopped) return;
    const previous = last;
    last = update;
    if (!previous || previous.status !== update.status) call(onStatusChange, update, previous);
    if (!previous || previous.progress !== update.progress || previous.message !== update.message
        || JSON.stringify(previous.counts) !== JSON.stringify(update.counts)) {
      call(onProgress, update);
    }
    if (TERMINAL.has(update.status)) {
      stop();
      call(onComplete, update);
    }
  }

  async function ticketFor() {
    if (ticket && ticket.expiresAt - Date.now() > TICKET_MARGIN_MS) return ticket.value;
    const response = await fetch(base + "/api/v1/tickets", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ stream: streamPath }),
      signal: aborter.signal,
    });
    if (!response.ok) throw await httpError(response);
    const body = await response.json();
    ticket = { value: body.ticket, expiresAt: Date.parse(body.expires_at) };
    return ticket.value;
  }

  async function connect() {
    if (stopped) return;
    const query = new URLSearchParams();
    // Each connection is a new EventSource, which does not send Last-Event-ID: the query does.
    if (lastEventId) query.set("last_event_id", lastEventId);
    try {
      if (token) query.set("ticket", await ticketFor());
    } catch (error) {
      return afterFailure(error);
    }
    if (stopped) return;
    const qs = query.toString();
    let opened = false;
    source = new EventSource(base + streamPath + (qs ? `?${qs}` : ""));
    source.onopen = () => { opened = true; };
    source.onmessage = (event) => {
      failures = 0;
      silentErrors = 0;
      if (event.lastEventId) lastEventId = event.lastEventId;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      if (data.type === "status_update") {
        deliver(data);
      } else if (data.type === "shutdown") {
        // This daemon is stopping: come back (to the next one) after a short pause. The next
        // one has a new ticket key, so the ticket is minted again.
        closeSource();
        ticket = null;
        failures = 1;
        later(connect, backoff());
      }
    };
    source.onerror = () => {
      if (stopped) return;
      // Every error ends this EventSource and jobd.js reconnects by itself: implementations
      // differ (browsers retry a dropped connection on their own, Node's gives up after a
      // network error), and a connection refused before it opened (an expired ticket, or one
      // from a daemon that has restarted) needs a new ticket rather than the same URL again.
      silentErrors += 1;
      closeSource();
      if (!opened) ticket = null;
      afterFailure(null);
    };
  }

  // Ask the API what is going on: the run may be over, unknown, or the token refused.
  async function afterFailure(error) {
    if (stopped) return;
    failures += 1;
    let probe;
    try {
      probe = await fetchRun();
    } catch (probeError) {
      silentErrors = 0; // nobody answers at all: a restart, not a stream problem
      fail(`jobd is unreachable: ${(error || probeError).message}`);
      return later(connect, backoff());
    }
    if (probe === null) return; // fatal, reported
    if (TERMINAL.has(probe.status)) return deliver(probe);
    if (error) fail(error.message, { status: error.status });
    if (silentErrors >= FAILURES_BEFORE_POLLING) {
      // The API answers but the stream keeps failing: poll instead.
      deliver(probe);
      return later(poll, pollInterval);
    }
    later(connect, backoff());
  }

  // The run as a status_update; null when watching cannot go on (reported as fatal).
  async function fetchRun() {
    const response = await fetch(base + runPath, { headers: headers(), signal: aborter.signal });
    if (response.status === 404 || response.status === 401 || response.status === 403) {
      const error = await httpError(response);
      fail(error.message, { fatal: true, status: response.status });
      return null;
    }
    if (!response.ok) throw await httpError(response);
    const { run } = await response.json();
    return {
      type: "status_update",
      run_id: run.id,
      job: run.job,
      status: run.status,
      progress: run.progress,
      message: run.message,
      counts: run.counts,
      error: run.error,
      result: run.result,
      attempt: run.attempt,
      updated_at: run.updated_at,
      parent_run_id: run.parent_run_id,
    };
  }

  async function poll() {
    if (stopped) return;
    let update;
    try {
      update = await fetchRun();
    } catch (error) {
      if (stopped) return;
      failures += 1;
      fail(`polling failed: ${error.message}`);
      return later(poll, Math.max(pollInterval, backoff()));
    }
    if (update === null) return;
    failures = 0;
    deliver(update);
    later(poll, pollInterval);
  }

  connect();
  return stop;
}

async function httpError(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = body.detail || body.title || detail;
  } catch {
    // not JSON: keep the status text
  }
  const error = new Error(`${response.status} ${detail}`);
  error.status = response.status;
  return error;
}
