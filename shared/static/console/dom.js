// DOM helpers. Every piece of data reaches the page as text (textContent, text nodes, attribute values): the
// console never parses a string as HTML, and its Content-Security-Policy (Trusted Types with no policy) would
// refuse it if it tried.

export const $ = (id) => document.getElementById(id);

const SVG_NS = "http://www.w3.org/2000/svg";

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** An element: el("td", {class: "x"}, "text", otherNode). */
export function el(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Set a node's text only when it changed (no flicker, no lost selection). */
export function setText(node, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

/** A definition list from [term, value] pairs; a value may be a node. */
export function fillFacts(dl, pairs) {
  dl.replaceChildren(...pairs.filter(([, value]) => value !== undefined).flatMap(([term, value]) => [
    el("dt", { text: term }),
    el("dd", {}, value === null || value === "" ? "–" : value),
  ]));
}

export function announce(text) {
  const region = $("announce");
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 50);  // a change screen readers notice
}

// -- times ---------------------------------------------------------------------------------------------------------
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.round(s / 86400)} d`;
}

export const now = () => Date.now() / 1000;

export function ago(epoch) {
  return epoch ? `${duration(now() - epoch)} ago` : "";
}

export function clock(epoch) {
  if (!epoch) return "";
  const d = new Date(epoch * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export const ACTIVE = new Set(["queued", "in_progress"]);

/** A status badge's classes: the status itself and its family (ok, bad, active). */
export function statusClass(status) {
  const family = ACTIVE.has(status) ? "active" : ["completed", "requires_action", "delivered", "healthy", "ok"]
    .includes(status) ? "ok" : ["failed", "expired", "degraded", "unhealthy"].includes(status) ? "bad" : "neutral";
  return `badge badge-${family}`;
}
