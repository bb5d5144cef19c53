// One run: status and times, output (text, function calls, requires_action), usage, error, the webhook with
// its attempts, cancel / delete / redeliver, the trace id, and the timeline picture. A running run's output
// streams in (live.js); the page re-reads the run while it runs or its webhook is being delivered.

import { ApiError, api } from "./api.js";
import { $, ACTIVE, announce, clock, duration, el, fillFacts, setText, statusClass } from "./dom.js";
import { follow } from "./live.js";
import { drawTimeline } from "./timeline.js";

const REFRESH_MS = 2000;
let runId = null;
let run = null;
let follower = null;
let timer = null;
let operator = false;
let loadFailed = false;  // run-message shows why the run could not be read (cleared once it can)

export function setRunOperator(isOperator) { operator = isOperator; }

export function enterRun(id) {
  runId = id;
  run = null;
  const output = $("output-text");
  output.textContent = "";
  delete output.dataset.source;
  ["run-facts", "usage", "webhook", "function-calls", "run-problem", "timeline"].forEach((name) => $(name).replaceChildren());
  setText($("run-id"), id);
  setText($("run-message"), "");
  setText($("live-state"), "");
  setText($("run-status"), "loading");
  load();
}

export function leaveRun() {
  runId = null;
  clearTimeout(timer);
  if (follower) follower.stop();
  follower = null;
}

async function load() {
  const id = runId;
  clearTimeout(timer);
  try {
    const fresh = await api(`runs/${encodeURIComponent(id)}`);
    if (id !== runId) return;
    run = fresh;
    if (loadFailed) setText($("run-message"), "");
    loadFailed = false;
    render();
    if (ACTIVE.has(run.status) && !follower) startFollowing();
  } catch (error) {
    if (id !== runId) return;
    loadFailed = true;
    setText($("run-message"), error.status === 404 ? `There is no run ${id} that this key can see.` : `Could not load the run: ${error.message}`);
    setText($("run-status"), error.status === 404 ? "not found" : "unknown");
    if (error.status === 404) return;
  }
  const busy = !run || ACTIVE.has(run.status) || (run.webhook && ["waiting", "pending"].includes(run.webhook.state));
  if (busy && id === runId) timer = setTimeout(load, REFRESH_MS);
}

function startFollowing() {
  const output = $("output-text");
  output.textContent = "";
  output.dataset.source = "stream";
  output.setAttribute("aria-busy", "true");
  follower = follow(run.id, {
    text: (delta) => output.append(delta),  // a text node: model output is never parsed as HTML
    status: (status) => { if (run && ACTIVE.has(run.status)) showStatus(status); },
    state: (words, connections) => {
      setText($("live-state"), `live output: ${words}`);
      output.dataset.connections = String(connections);
      output.dataset.lastEventId = follower && follower.lastEventId !== null ? follower.lastEventId : "";
    },
    end: (final) => {
      output.setAttribute("aria-busy", "false");
      output.dataset.lastEventId = follower.lastEventId ?? "";
      output.dataset.ended = "true";
      setText($("live-state"), "");
      if (final) announce(`Run ${final.id} ${final.status}.`);
      load();
    },
  });
}

function showStatus(status) {
  const badge = $("run-status");
  badge.className = statusClass(status);
  setText(badge, status);
}

function render() {
  const focusedId = document.activeElement && document.activeElement.id;  // redrawn below: keep its focus
  showStatus(run.status);
  document.title = `Run ${run.id} (${run.status}) – Runs console`;
  const active = ACTIVE.has(run.status);
  $("cancel-run").disabled = !active;
  const ended = run.completed_at;
  const trace = run.timeline && run.timeline.trace_id;
  fillFacts($("run-facts"), [
    ["Model", run.model],
    ["Caller", operator ? (run.owner || "native API") : undefined],
    ["Session", run.session_id],
    ["Created", clock(run.created_at)],
    ["Ended", ended ? clock(ended) : "still running"],
    ["Duration", duration((ended || Date.now() / 1000) - run.created_at) + (ended ? "" : " so far")],
    ["Provider ended to webhook", run.webhook_lag_seconds === null ? null : duration(run.webhook_lag_seconds)],
    ["Ran on", run.backend === "executor" ? "the executor (the app's own model call)" : "the provider's background mode"],
    ["Provider response", run.provider_response_id],
    ["Trace id", trace ? el("span", {}, el("code", { id: "trace-id", text: trace }), " ",
      el("button", { type: "button", id: "copy-trace", class: "small" }, "Copy")) : "none recorded (no telemetry, no traceparent from the caller)"],
  ]);
  const copy = $("copy-trace");
  if (copy) copy.addEventListener("click", () => copyTrace(trace));
  drawTimeline(run);
  if (!active) renderOutput();
  renderUsage();
  renderWebhook();
  const refocus = focusedId && $(focusedId);
  if (refocus && document.activeElement !== refocus) refocus.focus();
}

function renderOutput() {
  const output = $("output-text");
  if (output.dataset.source !== "stream" || output.textContent !== (run.output_text || "")) {
    setText(output, run.output_text || "");
    output.dataset.source = "stored";
  }
  const calls = (run.output || []).filter((item) => item.type === "function_call");
  const box = $("function-calls");
  box.replaceChildren();
  if (run.status === "requires_action") {
    box.append(el("p", { class: "note", text: "This run waits for function results: answer with function_call_output items in a new run of the same session." }));
  }
  if (calls.length) {
    box.append(el("h3", { text: `Function calls (${calls.length})` }), ...calls.map((call) => el("dl", { class: "facts call" },
      el("dt", { text: "Name" }), el("dd", { class: "mono", text: call.name }),
      el("dt", { text: "Call id" }), el("dd", { class: "mono", text: call.call_id }),
      el("dt", { text: "Arguments" }), el("dd", {}, el("pre", { class: "output", text: call.arguments })))));
  }
  const problem = $("run-problem");
  problem.replaceChildren();
  if (run.error) {
    problem.append(el("p", { class: "error-box" }, el("strong", { text: "Error " }),
      el("code", { text: run.error.code || "" }), " ", run.error.message || ""));
  }
  if (run.incomplete_details) {
    problem.append(el("p", { class: "note", text: `Incomplete: ${run.incomplete_details.reason || JSON.stringify(run.incomplete_details)}` }));
  }
}

function renderUsage() {
  const usage = run.usage;
  if (!usage) {
    fillFacts($("usage"), [["Tokens", ACTIVE.has(run.status) ? "counted when the run ends" : "not reported"]]);
    return;
  }
  const details = usage.output_tokens_details || {};
  fillFacts($("usage"), [
    ["Input tokens", usage.input_tokens], ["Output tokens", usage.output_tokens],
    ["Reasoning tokens", details.reasoning_tokens], ["Total tokens", usage.total_tokens],
  ]);
}

function renderWebhook() {
  const box = $("webhook");
  const hook = run.webhook;
  if (!hook) {
    box.replaceChildren(el("p", { class: "hint", text: "This run has no webhook." }));
    return;
  }
  const next = hook.next_attempt_at;
  const facts = el("dl", { class: "facts" });
  fillFacts(facts, [
    ["URL", el("span", { class: "mono", text: hook.url })],
    ["State", el("span", { class: statusClass(hook.state), text: hook.state })],
    ["Webhook id", hook.id],
    ["Next attempt", next ? `${clock(next)} (in ${duration(next - Date.now() / 1000)})` : null],
  ]);
  const rows = hook.attempts.map((attempt, index) => el("tr", { "data-ok": attempt.ok },
    el("td", { text: index + 1 }), el("td", { text: attempt.at }),
    el("td", { text: attempt.ok ? `delivered (HTTP ${attempt.status_code})` : (attempt.status_code ? `HTTP ${attempt.status_code}` : "no answer") }),
    el("td", { text: `${attempt.duration_ms} ms` }),
    el("td", { text: attempt.error || "" })));
  const table = el("table", { id: "attempts" },
    el("caption", { text: hook.attempts.length === 1 ? "1 attempt" : hook.attempts.length ? `${hook.attempts.length} attempts` : "No attempt yet" }),
    el("thead", {}, el("tr", {}, ...["#", "Started", "Result", "Took", "Error"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows));
  const redeliver = el("button", { type: "button", id: "redeliver" }, "Redeliver webhook");
  redeliver.disabled = ACTIVE.has(run.status);
  redeliver.addEventListener("click", () => act(redeliver, () => api(`runs/${run.id}/webhook/redeliver`, { method: "POST" }),
    "Redelivery queued: the same event, with the same webhook id, on a fresh retry schedule."));
  box.replaceChildren(facts, el("div", { class: "table-wrap" }, table), el("div", { class: "actions" }, redeliver));
}

// -- actions ----------------------------------------------------------------------------------------------------------
async function act(button, call, done) {
  button.disabled = true;
  setText($("run-message"), "");
  try {
    await call();
    announce(done);
    setText($("live-state"), done);
  } catch (error) {
    setText($("run-message"), error instanceof ApiError ? error.message : String(error));
  } finally {
    button.disabled = false;
    load();
  }
}

function confirmThen(question, confirmLabel, then) {
  const dialog = $("confirm");
  setText($("confirm-text"), question);
  setText($("confirm-ok"), confirmLabel);
  dialog.returnValue = "";
  dialog.addEventListener("close", () => { if (dialog.returnValue === "ok") then(); }, { once: true });
  dialog.showModal();
  $("confirm-keep").focus();
}

async function copyTrace(trace) {
  try {
    await navigator.clipboard.writeText(trace);
    announce("Trace id copied.");
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("trace-id"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    announce("Trace id selected: copy it with the keyboard.");
  }
}

export function wireRun() {
  $("cancel-run").addEventListener("click", () => confirmThen(`Cancel run ${runId}? The provider is asked to stop it.`,
    "Cancel the run", () => act($("cancel-run"), () => api(`runs/${runId}/cancel`, { method: "POST" }), "Cancel requested.")));
  $("delete-run").addEventListener("click", () => confirmThen(
    `Delete run ${runId}? Its output, its record and the provider's stored response are removed; a running run is cancelled first.`,
    "Delete the run", async () => {
      const id = runId;
      try {
        await api(`runs/${id}`, { method: "DELETE" });
        announce(`Run ${id} deleted.`);
        location.hash = "#/runs";
      } catch (error) {
        setText($("run-message"), `Could not delete the run: ${error.message}`);
      }
    }));
}
