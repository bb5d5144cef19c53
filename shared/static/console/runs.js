// The runs list: newest first, filters, cursor pages, refreshed in place every few seconds (rows are updated,
// added and removed one by one, so nothing flickers and the focused link keeps its focus).

import { api } from "./api.js";
import { $, ACTIVE, ago, announce, duration, el, now, setText, statusClass } from "./dom.js";

const REFRESH_MS = 3000;
let filters = {};
let cursors = [null];  // the cursor of each page seen so far; the last one is the page shown
let nextCursor = null;
let timer = null;
let operator = false;

export function setOperator(isOperator, callers) {
  operator = isOperator;
  $("owner-filter").hidden = !isOperator;
  document.querySelectorAll(".owner-col").forEach((cell) => { cell.hidden = !isOperator; });
  const select = $("filters").elements.owner;
  select.replaceChildren(el("option", { value: "", text: "all" }),
    ...(callers || []).map((c) => el("option", { value: c.name, text: c.name })));
}

/** Show the list for the hash's query (status, session_id, owner). */
export function enterRuns(query) {
  filters = { status: query.get("status") || "", session_id: query.get("session_id") || "", owner: query.get("owner") || "" };
  const form = $("filters");
  for (const name of Object.keys(filters)) form.elements[name].value = filters[name];
  cursors = [null];
  $("runs-body").replaceChildren();
  refresh();
  timer = setInterval(() => { if (document.visibilityState === "visible") refresh(); }, REFRESH_MS);
}

export function leaveRuns() {
  clearInterval(timer);
  timer = null;
}

let loading = false;
async function refresh() {
  if (loading) return;
  loading = true;
  try {
    const page = await api("runs", { query: { ...filters, cursor: cursors[cursors.length - 1], limit: 25 } });
    setText($("runs-error"), "");
    render(page.data);
    nextCursor = page.next_cursor;
    $("page-next").disabled = !page.has_more;
    $("page-prev").disabled = $("page-first").disabled = cursors.length === 1;
  } catch (error) {
    setText($("runs-error"), `Could not load the runs: ${error.message}`);
  } finally {
    loading = false;
  }
}

function render(runs) {
  const body = $("runs-body");
  const rows = new Map([...body.rows].map((row) => [row.dataset.id, row]));
  runs.forEach((run, index) => {
    let row = rows.get(run.id);
    if (!row) row = newRow(run.id);
    rows.delete(run.id);
    update(row, run);
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
  });
  rows.forEach((row) => row.remove());
  $("runs-empty").hidden = runs.length > 0;
}

function newRow(id) {
  const link = el("a", { href: `#/runs/${id}`, class: "mono", text: id });
  const row = el("tr", { "data-id": id }, el("td", {}, link), el("td", {}, el("span", {})),
    ...["model", "owner", "age", "duration", "lag"].map((name) => el("td", { "data-cell": name })));
  row.querySelector("[data-cell=owner]").classList.add("owner-col");
  row.querySelector("[data-cell=owner]").hidden = !operator;
  return row;
}

function update(row, run) {
  const before = row.dataset.status;
  if (before !== run.status) {
    row.dataset.status = run.status;
    const badge = row.cells[1].firstChild;
    badge.className = statusClass(run.status);
    setText(badge, run.status);
    if (before && ACTIVE.has(before) && !ACTIVE.has(run.status)) announce(`Run ${run.id} ${run.status}.`);
  }
  const cell = (name) => row.querySelector(`[data-cell=${name}]`);
  setText(cell("model"), run.model);
  setText(cell("owner"), run.owner || "native API");
  setText(cell("age"), ago(run.created_at));
  const ended = run.completed_at;
  setText(cell("duration"), ended ? duration(ended - run.created_at) : `${duration(now() - run.created_at)} so far`);
  setText(cell("lag"), lag(run.webhook));
}

function lag(webhook) {
  if (!webhook) return "no webhook";
  if (webhook.lag_seconds !== null && webhook.lag_seconds !== undefined) return duration(webhook.lag_seconds);
  return webhook.state === "failed" ? "failed" : webhook.state === "delivered" ? "delivered" : "not yet";
}

// -- filters and pages -----------------------------------------------------------------------------------------------
function go(query) {
  const params = new URLSearchParams(Object.entries(query).filter(([, value]) => value));
  location.hash = `#/runs${params.toString() ? `?${params}` : ""}`;
}

export function wireRuns() {
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target.elements;
    go({ status: form.status.value, session_id: form.session_id.value.trim(), owner: form.owner.value });
  });
  $("clear-filters").addEventListener("click", () => go({}));
  $("page-next").addEventListener("click", () => {
    if (!nextCursor) return;
    cursors.push(nextCursor);
    $("runs-body").replaceChildren();
    refresh();
  });
  $("page-prev").addEventListener("click", () => {
    if (cursors.length > 1) cursors.pop();
    $("runs-body").replaceChildren();
    refresh();
  });
  $("page-first").addEventListener("click", () => {
    cursors = [null];
    $("runs-body").replaceChildren();
    refresh();
  });
}
