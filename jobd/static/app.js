// The dashboard: who is looking (and with which scope), hash routes to views, and live updates.

import { ApiError, get, storeToken, storedToken } from "./api.js";
import { h, put, tickRelative } from "./dom.js";
import { jobsView } from "./jobs.js";
import { Connection } from "./live.js";
import { overviewView } from "./overview.js";
import { runView } from "./run.js";
import { runsView } from "./runs.js";

const SCOPE_RANK = { read: 1, trigger: 2, admin: 3 };
const main = document.getElementById("main");
const notices = document.getElementById("notices");
const indicator = document.getElementById("connection");
const sessionBox = document.getElementById("session");

const ctx = {
  session: null,
  can: (scope) => ctx.session !== null && SCOPE_RANK[ctx.session.scope] >= SCOPE_RANK[scope],
  navigate: (hash) => {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  notify,
};

let current = null; // { name, key, view }

const connection = new Connection({
  onMessage: (message) => current?.view.onEvent(message),
  onPoll: async () => {
    if (!current) return;
    try {
      await current.view.refresh();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) signOut("The token is no longer accepted.");
      throw err;
    }
  },
  onState: showConnection,
});

function showConnection(state) {
  indicator.dataset.state = state;
  indicator.querySelector(".label").textContent = state;
  const titles = {
    live: "Live: updates arrive as they happen",
    polling: "Polling: live updates are unavailable, the page refreshes every few seconds",
    offline: "Offline: jobd cannot be reached; retrying",
    connecting: "Connecting",
  };
  indicator.title = titles[state] || state;
}

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, qs = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean);
  const query = new URLSearchParams(qs);
  if (parts[0] === "jobs") return { name: "jobs", key: "jobs", query };
  if (parts[0] === "runs" && /^\d+$/.test(parts[1] || "")) return { name: "run", key: `run/${parts[1]}`, id: Number(parts[1]), query };
  if (parts[0] === "runs") return { name: "runs", key: "runs", query };
  return { name: "overview", key: "overview", query };
}

function createView(target) {
  if (target.name === "jobs") return jobsView(ctx);
  if (target.name === "runs") return runsView(ctx, target.query);
  if (target.name === "run") return runView(ctx, target.id);
  return overviewView(ctx);
}

function route() {
  if (!ctx.session) return;
  const target = parseRoute();
  for (const link of document.querySelectorAll("nav a[data-route]")) {
    const active = link.dataset.route === target.name || (target.name === "run" && link.dataset.route === "runs");
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (current && current.key === target.key && current.view.update) {
    current.view.update(target.query).catch(reportLoadError);
    return;
  }
  const first = current === null;
  current?.view.destroy();
  const view = createView(target);
  current = { ...target, view };
  put(main, view.element);
  document.title = `${view.title} · jobd`;
  // Moving focus tells screen readers that the page changed; not on the first load.
  if (!first) main.focus({ preventScroll: true });
  window.scrollTo(0, 0);
  view.refresh().catch(reportLoadError);
}

function reportLoadError(err) {
  if (err instanceof ApiError && err.status === 401) signOut("The token is no longer accepted.");
  else if (!(err instanceof ApiError && err.offline)) notify(`Could not load this page: ${err.message}`, "error");
}

function notify(content, kind = "ok") {
  const note = h("div", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", {}, content),
    h("button", { type: "button", class: "close", "aria-label": "Dismiss", onclick: () => note.remove() }, "×"));
  notices.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 15000 : 6000);
}

function showSession() {
  const s = ctx.session;
  if (!s || !s.auth) {
    put(sessionBox);
    return;
  }
  put(sessionBox, 
    h("span", { class: "who" }, `${s.token} · `, h("span", { class: "scope", dataset: { scope: s.scope } }, s.scope)),
    h("button", { type: "button", class: "link", onclick: () => signOut() }, "Sign out"));
}

function signOut(reason) {
  storeToken(null);
  ctx.session = null;
  connection.stop();
  current?.view.destroy();
  current = null;
  showSession();
  connection.setState("connecting");
  prompt(reason);
}

function prompt(reason) {
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", required: true, spellcheck: "false",
    "aria-describedby": "token-help",
  });
  const form = h("form", { class: "card login", "aria-labelledby": "login-title", onsubmit: (event) => {
    event.preventDefault();
    storeToken(input.value.trim());
    start();
  } },
    h("h1", { id: "login-title" }, "Sign in"),
    reason ? h("p", { class: "error-box", role: "alert" }, reason) : null,
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { id: "token-help", class: "muted" },
      "This jobd has tokens configured. The token is kept in this tab only (sessionStorage) and sent in a header, never in a URL."),
    h("button", { type: "submit", class: "primary" }, "Sign in"));
  put(main, form);
  document.title = "Sign in · jobd";
  input.focus();
}

async function start() {
  let who;
  try {
    who = await get("/whoami");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      const hadToken = Boolean(storedToken());
      storeToken(null);
      prompt(hadToken ? "That token was not accepted." : "");
      return;
    }
    showConnection("offline");
    put(main, h("p", { class: "error-box", role: "alert" }, `jobd cannot be reached (${err.message}). Retrying…`));
    setTimeout(start, 3000);
    return;
  }
  ctx.session = { auth: who.auth, scope: who.scope, token: who.token, features: who.features || [] };
  showSession();
  current?.view.destroy();
  current = null;
  route();
  connection.start(ctx.session);
}

document.getElementById("skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", route);
setInterval(() => tickRelative(main), 5000);
start();
