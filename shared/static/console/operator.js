// The operator view: one call (GET /api/console/api/operations) and one renderer per part of its answer. A new
// panel (capacity, once the service has it) is a new part of that JSON, a section in index.html and an entry
// in PANELS.

import { api } from "./api.js";
import { $, el, fillFacts, setText, statusClass } from "./dom.js";

const REFRESH_MS = 10000;
let timer = null;

const PANELS = [
  ["health", renderHealth],
  ["in_flight", renderInFlight],
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
    el("th", { scope: "row" }, el("a", { href: `#/runs?owner=${encodeURIComponent(name)}`, text: name })),
    el("td", { text: counts.operator === null ? "" : counts.operator ? "yes" : "no" }),
    el("td", { "data-count": "active", text: counts.active }),
    el("td", { "data-count": "webhook_pending", text: counts.webhook_pending })));
  $("in-flight").tBodies[0].replaceChildren(...rows);
  const read = inFlight.open_runs_read;
  setText($("in-flight-note"), `From the open-work index (${read} run${read === 1 ? "" : "s"} read)` +
    (inFlight.complete ? "." : "; there are more, not counted."));
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
