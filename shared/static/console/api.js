// The console's JSON API (/api/console/api/...), with the caller's key from this tab's session storage.

const KEY = "bgruns.console.key";
const BASE = new URL("console/api/", document.baseURI);  // the page is /api/console

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
  }
}

/** The page listens for this: a 401 means the key is gone or wrong, so back to the sign-in form. */
export const signedOut = new EventTarget();

export function url(path, query) {
  const target = new URL(path, BASE);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") target.searchParams.set(name, value);
  }
  return target;
}

export function headers(key = session.key, more = {}) {
  return { Authorization: `Bearer ${key}`, ...more };
}

/** One JSON call; throws ApiError for any non-2xx answer. */
export async function api(path, { method = "GET", query, key } = {}) {
  const response = await fetch(url(path, query), {
    method, cache: "no-store", headers: headers(key || session.key, { Accept: "application/json" }),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401 && !key) signedOut.dispatchEvent(new Event("signed-out"));
    throw new ApiError(response.status, body);
  }
  return body;
}

/** Server-Sent Events from a fetch body (EventSource cannot send an Authorization header). An event is
 * yielded only when its blank line arrives, so a connection cut mid-event yields nothing of it. */
export async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { data: [], type: "", id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, "");
        buffer = buffer.slice(end + 1);
        if (line === "") {
          if (event.data.length) yield { type: event.type || "message", data: event.data.join("\n"), id: event.id };
          event = { data: [], type: "", id: null };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") event.data.push(text);
          else if (field === "event") event.type = text;
          else if (field === "id") event.id = text;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
