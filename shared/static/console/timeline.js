// A run's timeline as a picture: an SVG time axis with one lane for the run, one for the provider and one for
// the webhook. Each mark has its details as a tooltip (hover) and as its accessible name; the picture is one
// Tab stop and the arrow keys (Home, End) move along its marks, showing each one's details below it.

import { $, clock, duration, el, svg } from "./dom.js";

const LANES = ["run", "provider", "webhook"];
// Entry type -> lane, label, shape. `capacity_queued` / `capacity_granted` bound a run's wait for provider capacity
// (shared/runs/admission.py), drawn as a band on the run's lane; the provider's part starts at the grant then.
const KINDS = {
  created: { lane: 0, label: "accepted", shape: "start" },
  capacity_queued: { lane: 0, label: "queued for capacity", shape: "dot" },
  capacity_waiting: { lane: 0, label: "still no capacity", shape: "dot" },
  capacity_paced: { lane: 0, label: "paced: waits for its slot", shape: "dot" },
  capacity_turn: { lane: 0, label: "waits for its caller's turn", shape: "dot" },
  capacity_granted: { lane: 0, label: "capacity granted", shape: "dot" },
  cancel_requested: { lane: 0, label: "cancel requested", shape: "dot" },
  cancel_refused: { lane: 0, label: "cancel refused", shape: "bad" },
  cancel_failed: { lane: 0, label: "cancel failed", shape: "bad" },
  repaired: { lane: 0, label: "repaired by the sweeper", shape: "dot" },
  finished: { lane: 0, label: "ended", shape: "end" },
  provider_accepted: { lane: 1, label: "provider accepted", shape: "start" },
  poll: { lane: 1, label: "poll", shape: "tick" },
  provider_event: { lane: 1, label: "provider event", shape: "dot" },
  provider_ended: { lane: 1, label: "provider ended", shape: "end" },
  webhook_attempt: { lane: 2, label: "webhook attempt", shape: "ok" },
  webhook_redelivery: { lane: 2, label: "redelivery requested", shape: "dot" },
  webhook_next: { lane: 2, label: "next webhook attempt", shape: "due" },
};
const W = 860, LEFT = 96, RIGHT = 16, TOP = 8, LANE_H = 34, AXIS_H = 26;
const STEPS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400];

function kind(entry) {
  return KINDS[entry.type] || { lane: 0, label: entry.type.replaceAll("_", " "), shape: "dot" };
}

/** What one entry says, in words (the mark's name, tooltip and detail line). */
export function describe(entry, start) {
  const parts = [kind(entry).label];
  if (entry.type === "webhook_attempt") {
    parts[0] = entry.ok ? "webhook delivered" : "webhook attempt failed";
    if (entry.status_code) parts.push(`HTTP ${entry.status_code}`);
    if (entry.duration_ms !== undefined && entry.duration_ms !== null) parts.push(`took ${entry.duration_ms} ms`);
  }
  if (entry.provider_status) parts.push(`provider says ${entry.provider_status}`);
  if (entry.status) parts.push(`status ${entry.status}`);
  if (entry.via) parts.push(`by ${entry.via}`);
  if (entry.what) parts.push(entry.what.replaceAll("_", " "));
  if (entry.next_poll_in !== undefined) parts.push(`next poll in ${duration(entry.next_poll_in)}`);
  if (entry.provider_status_code) parts.push(`provider HTTP ${entry.provider_status_code}`);
  if (entry.error) parts.push(`error: ${entry.error}`);
  parts.push(`at ${clock(entry.at)} (+${duration(entry.at - start)})`);
  return parts.join(", ");
}

/** The entries to draw: the recorded ones plus what the run says besides (provider end, next webhook attempt). */
export function entriesOf(run) {
  const entries = [...((run.timeline && run.timeline.entries) || [])].filter((e) => e.at);
  const finished = entries.find((e) => e.type === "finished");
  if (finished && finished.provider_completed_at) {
    entries.push({ at: finished.provider_completed_at, type: "provider_ended" });
  }
  if (run.webhook && run.webhook.next_attempt_at) entries.push({ at: run.webhook.next_attempt_at, type: "webhook_next" });
  return entries.sort((a, b) => a.at - b.at);
}

function niceStep(span) {
  return STEPS.find((step) => span / step <= 8) || STEPS[STEPS.length - 1];
}

function mark(shape, x, y) {
  if (shape === "start" || shape === "end") return svg("rect", { x: x - 5, y: y - 9, width: 10, height: 18, rx: 2 });
  if (shape === "tick") return svg("rect", { x: x - 1.5, y: y - 8, width: 3, height: 16 });
  if (shape === "due") return svg("circle", { cx: x, cy: y, r: 6, class: "hollow" });
  if (shape === "bad") return svg("path", { d: `M${x - 6} ${y - 6} L${x + 6} ${y + 6} M${x + 6} ${y - 6} L${x - 6} ${y + 6}` });
  return svg("circle", { cx: x, cy: y, r: 6 });
}

/** Draw `run`'s timeline into #timeline and its table; keeps the focused mark focused across redraws. */
export function drawTimeline(run) {
  const box = $("timeline");
  const entries = entriesOf(run);
  const start = run.created_at;
  const active = run.status === "queued" || run.status === "in_progress";
  const last = Math.max(start, ...entries.map((e) => e.at), active ? Date.now() / 1000 : start);
  const span = Math.max(last - start, 1);
  const x = (at) => LEFT + ((at - start) / span) * (W - LEFT - RIGHT);
  const laneY = (lane) => TOP + lane * LANE_H + LANE_H / 2;
  const height = TOP + LANES.length * LANE_H + AXIS_H;
  const focusedIndex = box.contains(document.activeElement) ? Number(document.activeElement.dataset.index) : null;

  const picture = svg("svg", {
    viewBox: `0 0 ${W} ${height}`, class: "timeline-svg", role: "group",
    "aria-label": `Timeline of the run: ${entries.length} marks over ${duration(span)}; use the arrow keys to move between them`,
  });
  LANES.forEach((name, lane) => {
    picture.append(svg("text", { x: 4, y: laneY(lane) + 4, class: "lane-label" }, name),
      svg("line", { x1: LEFT, x2: W - RIGHT, y1: laneY(lane), y2: laneY(lane), class: "lane" }));
  });
  const step = niceStep(span);
  for (let t = 0; t <= span + 1e-9; t += step) {
    picture.append(svg("line", { x1: x(start + t), x2: x(start + t), y1: TOP, y2: height - AXIS_H, class: "grid" }),
      svg("text", { x: x(start + t), y: height - 8, class: "axis-label", "text-anchor": "middle" }, `+${duration(t)}`));
  }
  // Spans: the run from accepted to its end (or now), the provider's part, and waiting for capacity.
  const at = (type) => (entries.find((e) => e.type === type) || {}).at;
  const band = (from, to, lane, cls) => {
    if (from === undefined) return;
    const end = to === undefined ? last : to;
    picture.append(svg("rect", { x: x(from), y: laneY(lane) - 4, width: Math.max(1, x(end) - x(from)), height: 8, class: cls }));
  };
  band(start, at("finished"), 0, `band band-run${active ? " band-active" : ""}`);
  band(at("provider_accepted") ?? at("capacity_granted"), at("provider_ended") ?? at("finished"), 1, "band band-provider");
  band(at("capacity_queued"), at("capacity_granted") ?? at("finished"), 0, "band band-capacity");

  const marks = entries.map((entry, index) => {
    const { lane, shape } = kind(entry);
    const words = describe(entry, start);
    const failed = entry.type === "webhook_attempt" && !entry.ok;
    const g = svg("g", {
      class: `mark mark-${entry.type}${failed ? " mark-failed" : ""}`, tabindex: -1, role: "img",
      "aria-label": words, "data-index": index, "data-type": entry.type,
    }, svg("title", {}, words), mark(failed ? "bad" : shape, x(entry.at), laneY(lane)));
    const show = () => { $("timeline-details").textContent = words; };
    g.addEventListener("focus", show);
    g.addEventListener("mouseenter", show);
    return g;
  });
  picture.append(...marks);
  if (marks.length) marks[Math.min(focusedIndex ?? 0, marks.length - 1)].setAttribute("tabindex", "0");
  picture.addEventListener("keydown", (event) => {
    const current = marks.indexOf(document.activeElement);
    const target = { ArrowRight: current + 1, ArrowDown: current + 1, ArrowLeft: current - 1, ArrowUp: current - 1,
      Home: 0, End: marks.length - 1 }[event.key];
    if (target === undefined || current < 0) return;
    event.preventDefault();
    const next = marks[Math.max(0, Math.min(marks.length - 1, target))];
    marks.forEach((m) => m.setAttribute("tabindex", m === next ? "0" : "-1"));
    next.focus();
  });
  box.replaceChildren(picture);
  if (focusedIndex !== null && marks[focusedIndex]) marks[focusedIndex].focus();

  const omitted = run.timeline ? run.timeline.polls.omitted : 0;
  const notes = [];
  if (omitted) notes.push(`${omitted} earlier polls are counted but not drawn.`);
  if (run.timeline && run.timeline.events_omitted) notes.push(`${run.timeline.events_omitted} older events were dropped.`);
  if (notes.length) box.append(el("p", { class: "hint", text: notes.join(" ") }));
  $("timeline-table").tBodies[0].replaceChildren(...entries.map((entry) => el("tr", { "data-type": entry.type },
    el("td", { text: clock(entry.at) }), el("td", { text: `+${duration(entry.at - start)}` }),
    el("td", { text: kind(entry).label }), el("td", { text: describe(entry, start) }))));
}
