// The console's entry: sign-in, the views and the hash router (#/runs?…, #/runs/<id>, #/operator). The key is
// never in the URL: it lives in this tab's session storage (api.js).

import { ApiError, api, session, signedOut } from "./api.js";
import { $, setText } from "./dom.js";
import { enterOperator, leaveOperator } from "./operator.js";
import { enterRun, leaveRun, setRunOperator, wireRun } from "./run.js";
import { enterRuns, leaveRuns, setOperator, wireRuns } from "./runs.js";

const VIEWS = ["sign-in", "runs", "run", "operator"];
let me = null;
let leave = () => {};

function showView(name, title) {
  leave();
  leave = () => {};
  for (const view of VIEWS) $(`view-${view}`).hidden = view !== name;
  document.title = `${title} – Runs console`;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === `#/${name === "run" ? "runs" : name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route({ focus = true } = {}) {
  if (!me) return;
  const hash = location.hash.startsWith("#/") ? location.hash.slice(2) : "runs";
  const [path, query] = hash.split("?");
  const parts = path.split("/");
  if (parts[0] === "runs" && parts[1]) {
    showView("run", `Run ${parts[1]}`);
    enterRun(decodeURIComponent(parts[1]));
    leave = leaveRun;
  } else if (parts[0] === "operator" && me.operator) {
    showView("operator", "Operator");
    enterOperator();
    leave = leaveOperator;
  } else {
    showView("runs", "Runs");
    enterRuns(new URLSearchParams(query || ""));
    leave = leaveRuns;
  }
  const heading = document.querySelector(".view:not([hidden]) h1");
  if (focus && heading) heading.focus();
}

function signedIn(identity) {
  me = identity;
  setText($("who"), identity.operator ? `${identity.caller} (operator)` : identity.caller);
  $("nav").hidden = false;
  $("nav-operator").hidden = !identity.operator;
  $("sign-out").hidden = false;
  setOperator(identity.operator, identity.callers);
  setRunOperator(identity.operator);
  route();
}

function showSignIn(message = "") {
  me = null;
  showView("sign-in", "Sign in");
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  setText($("who"), "");
  setText($("sign-in-error"), message);
  $("key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  try {
    const identity = await api("me", { key });
    session.set(key);
    $("key").value = "";
    signedIn(identity);
  } catch (error) {
    setText($("sign-in-error"), error instanceof ApiError && error.status === 401
      ? "That key is not valid here." : `Could not sign in: ${error.message}`);
  }
}

async function start() {
  wireRuns();
  wireRun();
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => { session.clear(); showSignIn("Signed out."); });
  $("skip").addEventListener("click", (event) => { event.preventDefault(); $("main").focus(); });
  signedOut.addEventListener("signed-out", () => { session.clear(); showSignIn("The key is no longer accepted; sign in again."); });
  window.addEventListener("hashchange", () => { if (location.hash.startsWith("#/")) route(); });
  if (!session.key) return showSignIn();
  try {
    signedIn(await api("me"));
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showSignIn(`Could not reach the service: ${error.message}`);
  }
}

start();
