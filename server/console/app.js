// The operator console: a few pages over the JSON API, with the bearer token the operator
// typed (kept in sessionStorage: this tab only). Everything is built with DOM calls and
// textContent, never HTML from data, so nothing a customer or Stripe sent can run here.
"use strict";

const TOKEN_KEY = "customer-sync-token";
const REFRESH_MS = 5000;

let refreshTimer = null;

// ---- the API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.error ? body.error.message : `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.code = body && body.error ? body.error.code : null;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/api/v1${path}`, init);
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (_) {
    parsed = null;
  }
  if (response.status === 401) {
    // The token was revoked or rotated: back to the sign-in form (which, while signing
    // in, says the token was refused).
    signOut("The server refused the token; sign in again.");
  }
  if (!response.ok) {
    throw new ApiError(response.status, parsed);
  }
  return parsed;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

// ---- building the page -------------------------------------------------------------------

// h("td", {class: "x"}, "text", child): an element with attributes and children (strings
// become text nodes).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
  }
  return el;
}

function table(caption, headings, rows, attrs) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      attrs || {},
      h("caption", { class: "muted" }, caption),
      h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows),
    ),
  );
}

function status(value) {
  return h("span", { class: `status status-${value}` }, value);
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return h("time", { datetime: iso, title: iso }, d.toLocaleString());
}

function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} days`;
}

function customerLink(id) {
  if (!id) return "—";
  return h("a", { href: `#/customers/${encodeURIComponent(id)}` }, id);
}

function page(...children) {
  const root = document.getElementById("page");
  root.replaceChildren(...children.filter((c) => c !== null && c !== undefined && c !== false));
}

function message(text, kind) {
  return h("p", { class: kind || "muted", role: kind === "error" ? "alert" : "status" }, text);
}

function showError(e) {
  page(message(`Could not load this page: ${e.message}`, "error"));
}

// ---- signing in --------------------------------------------------------------------------

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(refreshTimer);
  document.getElementById("nav").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = why || "";
  document.getElementById("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  const error = document.getElementById("sign-in-error");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  try {
    await api("GET", "/queue");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    error.textContent =
      e.status === 401 ? "That token was refused." : `The server did not answer: ${e.message}`;
    input.select();
    return;
  }
  input.value = "";
  error.textContent = "";
  if (!location.hash || location.hash === "#/") location.hash = "#/overview";
  else route();
}

// ---- pages -------------------------------------------------------------------------------

async function overview() {
  const [health, queue, sync] = await Promise.all([
    fetch("/api/v1/health").then((r) => r.json()).catch(() => ({ status: "unavailable", database: "unreachable" })),
    api("GET", "/queue"),
    api("GET", "/sync/status"),
  ]);
  const count = (status) =>
    queue.tasks.filter((t) => t.status === status).reduce((n, t) => n + t.count, 0);
  const oldest = queue.tasks
    .map((t) => t.oldest_due_seconds)
    .filter((s) => s !== null && s !== undefined);
  const stripe = sync.providers.stripe;
  const cursor = stripe && stripe.events_cursor;
  const limits = queue.rate_limits;
  const last429 = limits
    .map((r) => r.last_rate_limited_at)
    .filter(Boolean)
    .sort()
    .pop();
  const card = (label, value, id) =>
    h("div", { class: "card" }, h("dl", {}, h("dt", {}, label), h("dd", { id }, value)));
  page(
    h("h2", {}, "Overview"),
    h(
      "div",
      { class: "cards" },
      card("Health", status(health.status), "health"),
      card("Database", status(health.database), "database"),
      card("Pending tasks", count("pending"), "pending"),
      card("In flight", count("in_flight"), "in-flight"),
      card("Dead tasks", count("dead"), "dead-count"),
      card("Oldest due task", oldest.length ? seconds(Math.max(...oldest)) : "none due", "oldest-due"),
      card(
        "Last webhook heard",
        stripe ? (stripe.webhook.last_heard_at ? seconds(stripe.webhook.seconds_since_last) + " ago" : "never") : "Stripe off",
        "last-webhook",
      ),
      card("Catch-up cursor age", cursor ? seconds(cursor.age_seconds) : "no poll yet", "cursor-age"),
      card("Last 429", last429 ? when(last429) : "none", "last-429"),
    ),
    stripe && stripe.warning ? message(stripe.warning, "error") : null,
    cursor && cursor.last_poll_error ? message(`Last catch-up poll failed: ${cursor.last_poll_error}`, "error") : null,
    h("h3", {}, "Queue by provider and status"),
    queue.tasks.length
      ? table(
          "Unfinished and dead tasks (succeeded ones are not counted)",
          ["Provider", "Status", "Tasks", "Oldest due"],
          queue.tasks.map((t) =>
            h("tr", {}, h("td", {}, t.provider), h("td", {}, status(t.status)), h("td", {}, t.count), h("td", {}, seconds(t.oldest_due_seconds))),
          ),
          { id: "queue" },
        )
      : message("The queue is empty: every task has succeeded."),
    h("h3", {}, "Provider rate limits (429)"),
    limits.length
      ? table(
          "429s shared by every consumer of an account",
          ["Account", "429s", "Last", "Paused until"],
          limits.map((r) =>
            h("tr", {}, h("td", { class: "mono" }, r.account), h("td", {}, r.rate_limited_total), h("td", {}, when(r.last_rate_limited_at)), h("td", {}, r.paused_until ? when(r.paused_until) : "not paused")),
          ),
        )
      : message("No consumer has reserved a rate budget yet."),
    message(`Refreshed ${new Date().toLocaleTimeString()}; every ${REFRESH_MS / 1000} s.`),
  );
  return true;
}

async function deadTasks(params) {
  const provider = params.get("provider") || "";
  const list = await api("GET", `/tasks${query({ status: "dead", provider, limit: 100 })}`);
  const notice = h("p", { id: "retry-notice", role: "status", class: "notice" });
  const retry = async (task, button) => {
    button.disabled = true;
    try {
      const t = await api("POST", `/tasks/${task.id}/retry`);
      notice.textContent = `Task ${t.id} (${t.operation} ${t.customer_id} at ${t.provider}) is ${t.status} again.`;
      return true;
    } catch (e) {
      notice.textContent = `Retrying ${task.id} failed: ${e.message}`;
      notice.className = "error";
      button.disabled = false;
      return false;
    }
  };
  const rows = list.tasks.map((t) => {
    const button = h("button", { type: "button", "aria-label": `Retry task ${t.id}` }, "Retry");
    button.addEventListener("click", async () => {
      if (await retry(t, button)) setTimeout(() => route(notice.textContent), 0);
    });
    return h(
      "tr",
      { "data-task": t.id },
      h("td", {}, customerLink(t.customer_id)),
      h("td", {}, t.provider),
      h("td", {}, `${t.operation} v${t.version}`),
      h("td", {}, t.attempts),
      h("td", { class: "error-text" }, t.last_error || "—"),
      h("td", {}, when(t.updated_at)),
      h("td", {}, button),
    );
  });
  const retryAll = h("button", { type: "button", id: "retry-all", disabled: !rows.length }, `Retry all ${rows.length} shown`);
  retryAll.addEventListener("click", async () => {
    retryAll.disabled = true;
    let done = 0;
    for (const [i, t] of list.tasks.entries()) {
      if (await retry(t, rows[i].querySelector("button"))) done += 1;
    }
    route(`${done} of ${list.tasks.length} tasks are pending again.`);
  });
  const filter = h(
    "form",
    { onsubmit: (e) => { e.preventDefault(); location.hash = `#/dead${query({ provider: e.target.provider.value })}`; } },
    h("label", { for: "dead-provider" }, "Provider"),
    h("select", { id: "dead-provider", name: "provider" },
      ["", "stripe", "salesforce"].map((p) => h("option", { value: p, selected: p === provider }, p || "all"))),
    h("button", { type: "submit", class: "secondary" }, "Filter"),
  );
  page(
    h("h2", {}, "Dead tasks"),
    h("p", { class: "muted" }, "Tasks a provider refused or that ran out of attempts. A retry puts a task back in the queue with a fresh attempt budget."),
    filter,
    h("p", {}, retryAll),
    notice,
    rows.length
      ? table("Dead tasks, oldest first", ["Customer", "Provider", "Change", "Attempts", "Last error", "Updated", ""], rows, { id: "dead-tasks" })
      : message("No dead task.", "notice"),
  );
  return true;
}

const OUTCOMES = ["", "applied", "imported", "deleted", "invoice_stored", "in_sync", "older_than_local", "stale",
  "deleted_locally", "already_deleted", "id_taken", "unusable_id", "unknown_local_id", "unknown_customer", "unhandled"];

async function events(params) {
  const type = params.get("type") || "";
  const outcome = params.get("outcome") || "";
  const after = params.get("after") || "";
  const list = await api("GET", `/events${query({ type, outcome, after, limit: 50 })}`);
  const form = h(
    "form",
    {
      onsubmit: (e) => {
        e.preventDefault();
        location.hash = `#/events${query({ type: e.target.type.value.trim(), outcome: e.target.outcome.value })}`;
      },
    },
    h("label", { for: "event-type" }, "Type"),
    h("input", { id: "event-type", name: "type", value: type, placeholder: "customer.updated" }),
    h("label", { for: "event-outcome" }, "Outcome"),
    h("select", { id: "event-outcome", name: "outcome" }, OUTCOMES.map((o) => h("option", { value: o, selected: o === outcome }, o || "any"))),
    h("button", { type: "submit" }, "Filter"),
  );
  const rows = list.events.map((e) =>
    h(
      "tr",
      {},
      h("td", {}, when(e.received_at)),
      h("td", { class: "mono" }, e.type),
      h("td", {}, e.outcome ? status(e.outcome) : h("span", { class: "muted" }, "not recorded")),
      h("td", {}, e.source === "webhook" ? "webhook" : "catch-up"),
      h("td", { class: "mono" }, e.object_id || "—"),
      h("td", {}, customerLink(e.customer_id)),
      h("td", { class: "mono" }, e.id),
    ),
  );
  page(
    h("h2", {}, "Webhook events"),
    form,
    rows.length
      ? table("Events received, newest first", ["Received", "Type", "Outcome", "Came by", "Object", "Customer", "Event id"], rows, { id: "events" })
      : message("No event matches."),
    h(
      "p",
      {},
      after ? h("a", { href: `#/events${query({ type, outcome })}` }, "Newest") : null,
      " ",
      list.next_after ? h("a", { href: `#/events${query({ type, outcome, after: list.next_after })}` }, "Older events") : null,
    ),
  );
  return !after;
}

function linkCells(c) {
  return h(
    "td",
    {},
    c.links.length
      ? h("ul", {}, c.links.map((l) => h("li", {}, `${l.provider}: `, status(l.state), " ", h("span", { class: "mono" }, l.external_id || "no id yet"))))
      : "no provider",
  );
}

async function customers(params) {
  const search = (params.get("q") || "").trim();
  const after = params.get("after") || "";
  let found;
  let next = null;
  let note = null;
  if (search && search.includes("@")) {
    found = (await api("GET", `/customers${query({ email: search, include_deleted: "true", limit: 100 })}`)).customers;
  } else if (search) {
    try {
      found = [await api("GET", `/customers/${encodeURIComponent(search)}`)];
    } catch (e) {
      if (e.status !== 404 && e.status !== 400) throw e;
      found = [];
      note = e.message;
    }
  } else {
    const list = await api("GET", `/customers${query({ after, limit: 50, include_deleted: "true" })}`);
    found = list.customers;
    next = list.next_after;
  }
  const form = h(
    "form",
    { role: "search", onsubmit: (e) => { e.preventDefault(); location.hash = `#/customers${query({ q: e.target.q.value.trim() })}`; } },
    h("label", { for: "customer-search" }, "Id or email"),
    h("input", { id: "customer-search", name: "q", value: search, type: "search" }),
    h("button", { type: "submit" }, "Search"),
  );
  const rows = found.map((c) =>
    h(
      "tr",
      {},
      h("td", {}, customerLink(c.id)),
      h("td", {}, c.name),
      h("td", {}, c.email),
      h("td", {}, c.version),
      linkCells(c),
      h("td", {}, c.deleted_at ? when(c.deleted_at) : "—"),
    ),
  );
  page(
    h("h2", {}, "Customers"),
    form,
    note ? message(note) : null,
    rows.length
      ? table(search ? "Customers found" : "Customers by id", ["Id", "Name", "Email", "Version", "Providers", "Deleted"], rows, { id: "customers" })
      : message(search ? "No customer found." : "No customer yet."),
    next ? h("p", {}, h("a", { href: `#/customers${query({ after: next })}` }, "Next page")) : null,
  );
  return false;
}

async function timeline(id) {
  const t = await api("GET", `/customers/${encodeURIComponent(id)}/timeline`);
  const c = t.customer;
  const item = (entry) => {
    if (entry.kind === "change") {
      return h(
        "li",
        { class: "change" },
        h("strong", {}, `${entry.operation} (version ${entry.version})`),
        " ",
        when(entry.at),
        h("div", {}, entry.request_id ? ["API request ", h("code", {}, entry.request_id)] : "from Stripe (webhook or catch-up) or a job"),
        h(
          "ul",
          {},
          entry.tasks.map((x) =>
            h(
              "li",
              { class: "task" },
              `${x.task.provider}: `,
              status(x.task.status),
              `, ${x.task.attempts} attempt${x.task.attempts === 1 ? "" : "s"}`,
              x.task.completed_at ? [", done ", when(x.task.completed_at)] : null,
              x.external_id ? [", id ", h("code", {}, x.external_id)] : null,
              x.task.last_error ? h("div", { class: "error" }, `Last error: ${x.task.last_error}`) : null,
            ),
          ),
        ),
      );
    }
    const e = entry.event;
    return h(
      "li",
      { class: "event" },
      h("strong", {}, e.type),
      " ",
      when(entry.at),
      h(
        "div",
        {},
        e.source === "webhook" ? "webhook" : "catch-up",
        ", outcome ",
        e.outcome ? status(e.outcome) : "not recorded",
        ", ",
        h("code", {}, e.id),
        e.object_id && e.object_id !== (c.links.find((l) => l.provider === "stripe") || {}).external_id ? [" about ", h("code", {}, e.object_id)] : null,
      ),
    );
  };
  page(
    h("h2", {}, `Customer ${c.id}`),
    h(
      "div",
      { class: "cards" },
      h("div", { class: "card" }, h("dl", {}, h("dt", {}, "Name"), h("dd", {}, c.name))),
      h("div", { class: "card" }, h("dl", {}, h("dt", {}, "Email"), h("dd", {}, c.email))),
      h("div", { class: "card" }, h("dl", {}, h("dt", {}, "Version"), h("dd", {}, c.version))),
      h("div", { class: "card" }, h("dl", {}, h("dt", {}, "Deleted"), h("dd", {}, c.deleted_at ? when(c.deleted_at) : "no"))),
    ),
    table("Providers", ["Provider", "State", "Id", "Synced version"], c.links.map((l) =>
      h("tr", {}, h("td", {}, l.provider), h("td", {}, status(l.state)), h("td", { class: "mono" }, l.external_id || "—"), h("td", {}, l.synced_version)))),
    h("h3", {}, "Timeline"),
    t.truncated ? message("Only the newest 500 tasks and 500 events are shown.") : null,
    t.entries.length
      ? h("ol", { class: "timeline", id: "timeline" }, t.entries.map(item))
      : message("Nothing is recorded for this customer (retention may have removed it)."),
  );
  return true;
}

async function jobs(params) {
  const shown = params.get("id");
  const list = await api("GET", "/jobs?limit=20");
  const notice = h("p", { role: "status", class: "notice", id: "job-notice" });
  const form = h(
    "form",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        const kind = e.target.kind.value;
        const repair = e.target.repair.checked;
        try {
          const job = await api("POST", "/jobs", { kind, provider: "stripe", repair: kind === "reconcile" && repair });
          location.hash = `#/jobs${query({ id: job.id })}`;
        } catch (err) {
          notice.className = "error";
          notice.textContent = `The job was not started: ${err.message}`;
        }
      },
    },
    h("label", { for: "job-kind" }, "Kind"),
    h("select", { id: "job-kind", name: "kind" }, h("option", { value: "reconcile" }, "reconcile"), h("option", { value: "import" }, "import")),
    h("input", { id: "job-repair", name: "repair", type: "checkbox" }),
    h("label", { for: "job-repair" }, "Repair (reconcile only)"),
    h("button", { type: "submit" }, "Start"),
  );
  let detail = null;
  let running = list.jobs.some((j) => j.status === "queued" || j.status === "running");
  if (shown) {
    const job = await api("GET", `/jobs/${encodeURIComponent(shown)}`);
    const findings = await api("GET", `/jobs/${encodeURIComponent(shown)}/findings?limit=100`);
    running = running || job.status === "queued" || job.status === "running";
    // A finished job's report holds its counts (and the first findings, listed below);
    // a running job's progress is the counts so far.
    const counts = Object.entries((job.report ? job.report.counts : job.progress) || {});
    detail = h(
      "section",
      { id: "job" },
      h("h3", {}, `${job.kind} ${job.id}`),
      h("p", {}, "Status ", h("span", { id: "job-status" }, status(job.status)), `, phase ${job.phase}`, job.error ? h("span", { class: "error" }, ` — ${job.error}`) : null),
      h("h4", {}, job.report ? "Report" : "Progress"),
      counts.length
        ? table(job.report ? "What the job counted" : "Counts so far", ["What", "Count"], counts.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k.replace(/_/g, " ")), h("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v)))), { id: "job-report" })
        : message("Nothing counted yet."),
      h("h4", {}, "Findings"),
      findings.findings.length
        ? table("What the job found (first 100)", ["Kind", "Customer", "Stripe id", "Detail"], findings.findings.map((f) =>
            h("tr", {}, h("td", {}, f.kind), h("td", {}, customerLink(f.customer_id)), h("td", { class: "mono" }, f.external_id || "—"), h("td", { class: "mono" }, f.detail ? JSON.stringify(f.detail) : "—"))))
        : message("No finding."),
    );
  }
  page(
    h("h2", {}, "Jobs"),
    h("p", { class: "muted" }, "An import adopts the customers already in Stripe; a reconcile compares both sides and reports drift (and with repair, heals it)."),
    form,
    notice,
    detail,
    h("h3", {}, "Recent jobs"),
    list.jobs.length
      ? table("Newest first", ["Job", "Kind", "Status", "Created", "Finished"], list.jobs.map((j) =>
          h("tr", {}, h("td", {}, h("a", { href: `#/jobs${query({ id: j.id })}`, class: "mono" }, j.id)), h("td", {}, j.kind + (j.repair ? " (repair)" : "")), h("td", {}, status(j.status)), h("td", {}, when(j.created_at)), h("td", {}, when(j.finished_at)))), { id: "jobs" })
      : message("No job yet."),
  );
  return running;
}

// ---- routing -----------------------------------------------------------------------------

const PAGES = {
  overview: () => overview(),
  dead: (params) => deadTasks(params),
  events: (params) => events(params),
  customers: (params, rest) => (rest ? timeline(decodeURIComponent(rest)) : customers(params)),
  jobs: (params) => jobs(params),
};

// Renders the page the hash names; pages that answer true are refreshed live. `notice`
// survives the refresh (a retry's answer).
async function route(notice) {
  clearTimeout(refreshTimer);
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    signOut();
    return;
  }
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  const [path, search] = (location.hash.slice(2) || "overview").split("?");
  const [name, ...rest] = path.split("/");
  const render = PAGES[name] || PAGES.overview;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  let live = false;
  try {
    live = await render(new URLSearchParams(search || ""), rest.join("/"));
    if (typeof notice === "string" && notice) {
      const target = document.getElementById("retry-notice");
      if (target) target.textContent = notice;
    }
  } catch (e) {
    if (e.status !== 401) showError(e);
    return;
  }
  if (live && sessionStorage.getItem(TOKEN_KEY)) {
    refreshTimer = setTimeout(() => refresh(typeof notice === "string" ? notice : undefined), REFRESH_MS);
  }
}

// A live page is rendered again, unless the operator is in one of its fields (a refresh
// would take away what they are typing).
function refresh(notice) {
  const active = document.activeElement;
  const typing = active && active.closest("#page form") && active.matches("input, select");
  if (typing) refreshTimer = setTimeout(() => refresh(notice), REFRESH_MS);
  else route(notice);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-in-form").addEventListener("submit", signIn);
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", () => {
    route();
    document.getElementById("main").focus();
  });
  route();
});
