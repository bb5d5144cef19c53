// The operator view: one call (GET /api/console/api/operations) and one renderer per part of its answer. A new
// panel is a new part of that JSON, a section in index.html and an entry in PANELS.

import { api } from "./api.js";
import { $, el, fillFacts, setText, statusClass, svg } from "./dom.js";

const REFRESH_MS = 10000;
let timer = null;

const PANELS = [
  ["health", renderHealth],
  ["in_flight", renderInFlight],
  ["capacity", renderCapacity],
  ["metrics", renderMetrics],
];

export function enterOperator() {
  refresh();
  timer = setInterval(() => { if (document.visibilityState === "visible") refresh(); }, REFRESH_MS);
}

export function leaveOperator() {
  clearInterval(timer);
  timer = null;
}

async function refresh() {
  try {
    const operations = await api("operations");
    setText($("operator-error"), "");
    for (const [part, render] of PANELS) {
      if (operations[part] !== undefined) render(operations[part]);
    }
  } catch (error) {
    setText($("operator-error"), `Could not load the operator view: ${error.message}`);
  }
}

function renderHealth(health) {
  const badge = $("health-status");
  badge.className = statusClass(health.status);
  setText(badge, health.status);
  const c = health.checks;
  const yes = (flag) => (flag ? "on" : "off");
  fillFacts($("health"), [
    ["Storage", c.storage],
    ["Provider", `${c.provider.kind} (default model ${c.provider.default_model}, auth by ${c.provider.auth.replace("_", " ")})`],
    ["Runs go to", c.backend.run_backend === "executor"
      ? `the executor (${c.backend.executor_api.replace("_", " ")})` : "the provider's background mode"],
    ["Completion strategy", c.completion.strategy],
    ["Provider webhook secrets", String(c.completion.provider_webhook_secrets)],
    ["Webhooks", `${yes(c.webhooks.enabled)} (${c.webhooks.signing_secrets} signing secrets)`],
    ["Responses API", `${c.responses_api.callers} callers, ${c.responses_api.keys} keys`],
  ]);
}

function renderInFlight(inFlight) {
  const rows = Object.entries(inFlight.callers).map(([name, counts]) => el("tr", { "data-caller": name },
    el("th", { scope: "row" }, callerCell(name)),
    el("td", { text: counts.operator === null ? "" : counts.operator ? "yes" : "no" }),
    el("td", { "data-count": "active", text: counts.active }),
    el("td", { "data-count": "webhook_pending", text: counts.webhook_pending })));
  $("in-flight").tBodies[0].replaceChildren(...rows);
  const read = inFlight.open_runs_read;
  setText($("in-flight-note"), `From the open-work index (${read} run${read === 1 ? "" : "s"} read)` +
    (inFlight.complete ? "." : "; there are more, not counted."));
}

// A caller's name links to its runs; `@native` (the native API's callers together) is no caller to filter by.
const CALLER_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

function callerCell(name) {
  return CALLER_NAME.test(name) ? el("a", { href: `#/runs?owner=${encodeURIComponent(name)}`, text: name })
    : el("span", { class: "mono", text: name });
}

const limit = (n) => (n === 0 ? "unlimited" : String(n));

function renderCapacity(capacity) {
  const rows = Object.entries(capacity.callers).map(([name, c]) => {
    const atCap = c.max_active_runs > 0 && c.active_slots !== null && c.active_slots >= c.max_active_runs;
    return el("tr", { "data-caller": name, "data-at-cap": atCap ? "true" : null },
      el("th", { scope: "row" }, callerCell(name)),
      el("td", { "data-count": "active_slots" }, heldOfLimit(c, atCap)),
      el("td", { "data-limit": "max_active_runs", text: limit(c.max_active_runs) }),
      el("td", { "data-limit": "starts_per_minute", text: limit(c.starts_per_minute) }),
      el("td", { "data-count": "active_runs", text: c.active_runs }),
      el("td", { "data-count": "status_queued", text: c.status_queued }),
      el("td", { "data-count": "waiting_for_capacity", text: c.waiting_for_capacity }));
  });
  $("capacity").tBodies[0].replaceChildren(...rows);
  $("deployments").replaceChildren(...capacity.deployments.map((d) => el("li", {},
    el("span", { class: "mono", text: d.name }), ` (${d.provider}${d.default ? ", the default model" : ""})`)));
}

/** The slots a caller holds as text ("2 of 3"), with a bar beside it that repeats it for the eye. */
function heldOfLimit(c, atCap) {
  if (c.active_slots === null) return el("span", { class: "hint", text: "not capped" });
  if (c.max_active_runs === 0) return `${c.active_slots} (not capped now)`;
  const width = Math.min(100, Math.round((100 * c.active_slots) / c.max_active_runs));
  return [
    svg("svg", { class: "quota-bar", viewBox: "0 0 100 10", width: 100, height: 10, "aria-hidden": "true" },
      svg("rect", { class: "quota-track", x: 0.5, y: 0.5, width: 99, height: 9, rx: 2 }),
      svg("rect", { class: atCap ? "quota-used quota-full" : "quota-used", x: 0.5, y: 0.5,
        width: Math.max(0, width - 1), height: 9, rx: 2 })),
    `${c.active_slots} of ${c.max_active_runs}`,
    atCap ? " " : null,
    atCap ? el("span", { class: "badge badge-bad", text: "at the cap" }) : null,
  ];
}

function renderMetrics(metrics) {
  fillFacts($("metrics"), [
    ["Scope", metrics.scope],
    ["CPU time", `${metrics.cpu_seconds.toFixed(1)} s`],
    ["Peak memory", `${(metrics.max_rss_kib / 1024).toFixed(0)} MiB`],
    ["Storage requests", String(metrics.storage_requests_total)],
  ]);
  const rows = Object.entries(metrics.storage_requests_by_function)
    .map(([name, counts]) => [name, Object.values(counts).reduce((a, b) => a + b, 0)])
    .sort((a, b) => b[1] - a[1])
    .map(([name, total]) => el("tr", {}, el("th", { scope: "row", class: "mono", text: name }), el("td", { text: total })));
  $("metrics-functions").tBodies[0].replaceChildren(...rows);
}
