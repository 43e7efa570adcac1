// Live updates: Server-Sent Events when they work, polling when they do not, and back again by itself.
//
// An EventSource cannot send headers, so with auth on each connection first mints a short-lived
// ticket bound to that stream (POST /api/v1/tickets) and puts only the ticket in the URL.

import { ApiError, PREFIX, post, storedToken } from "./api.js";

const MAX_BACKOFF_MS = 5000;

// Opens one SSE stream. Resolves once it is open; rejects (ApiError or Error) if it cannot be.
// handlers: onMessage(obj), onClose(reason) — reason is "error" or "shutdown" or "closed".
export async function openStream(path, query, handlers, { auth }) {
  const params = new URLSearchParams(query || {});
  if (auth) {
    if (!storedToken()) throw new ApiError(401, { detail: "no token" });
    const minted = await post("/tickets", { stream: PREFIX + path });
    params.set("ticket", minted.ticket);
  }
  const qs = [...params].length ? `?${params}` : "";
  const source = new EventSource(PREFIX + path + qs);
  let open = false;
  let closed = false;
  const close = (reason) => {
    if (closed) return;
    closed = true;
    source.close();
    if (open) handlers.onClose?.(reason);
  };
  return new Promise((resolve, reject) => {
    source.onopen = () => {
      open = true;
      resolve({ close: () => close("closed") });
    };
    source.onerror = () => {
      if (!open) {
        closed = true;
        source.close();
        reject(new Error("the stream could not be opened"));
      } else {
        close("error");
      }
    };
    source.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (message.type === "shutdown") {
        close("shutdown");
        return;
      }
      handlers.onMessage(message);
    };
  });
}

// The page's one connection state: "connecting", "live" (firehose open), "polling" or "offline".
export class Connection {
  constructor({ onMessage, onPoll, onState, pollIntervalMs = 2000 }) {
    this.onMessage = onMessage;
    this.onPoll = onPoll;
    this.onState = onState;
    this.pollIntervalMs = pollIntervalMs;
    this.state = "connecting";
    this.stream = null;
    this.backoffMs = 1000;
    this.retryTimer = null;
    this.pollTimer = null;
    this.pollLoop = null;
    this.stopped = true;
    this.generation = 0;
  }

  // features: from /whoami; scope decides whether the firehose (admin) is open to this token.
  start({ features, scope, auth }) {
    this.stop();
    this.stopped = false;
    this.auth = auth;
    const streamable = features.includes("events") && scope === "admin" && (!auth || features.includes("tickets"));
    if (streamable) this.connect();
    else this.startPolling();
  }

  stop() {
    this.stopped = true;
    this.generation += 1;
    clearTimeout(this.retryTimer);
    this.stopPolling();
    if (this.stream) this.stream.close();
    this.stream = null;
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state);
  }

  async connect() {
    if (this.stopped) return;
    const generation = this.generation;
    try {
      const stream = await openStream("/events", null, {
        onMessage: (message) => this.onMessage(message),
        onClose: () => {
          if (generation !== this.generation) return;
          this.stream = null;
          this.fallBack();
        },
      }, { auth: this.auth });
      if (generation !== this.generation) {
        stream.close();
        return;
      }
      this.stream = stream;
      this.backoffMs = 1000;
      this.stopPolling();
      this.setState("live");
      // Whatever happened while the stream was down is read once; the stream has the rest.
      this.poll();
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 403 || err.status === 404)) {
        // This token may not open the firehose (or the daemon has none): polling is the way.
        if (generation === this.generation) this.startPolling();
        return;
      }
      if (generation === this.generation) this.fallBack();
    }
  }

  fallBack() {
    if (this.stopped) return;
    this.startPolling();
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
  }

  startPolling() {
    if (this.pollTimer !== null || this.stopped) return;
    if (this.state !== "offline") this.setState("polling");
    const loop = {};
    this.pollLoop = loop;
    const tick = async () => {
      await this.poll();
      if (this.pollLoop === loop) this.pollTimer = setTimeout(tick, this.pollIntervalMs);
    };
    this.pollTimer = setTimeout(tick, 0);
  }

  stopPolling() {
    clearTimeout(this.pollTimer);
    this.pollTimer = null;
    this.pollLoop = null;
  }

  // Refreshes the current view; the outcome tells whether the daemon is reachable.
  async poll() {
    let reachable = true;
    try {
      await this.onPoll();
    } catch (err) {
      reachable = !(err instanceof ApiError && err.offline);
    }
    if (this.stopped) return;
    if (this.stream) this.setState("live");
    else this.setState(reachable ? "polling" : "offline");
  }
}
