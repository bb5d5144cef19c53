// Following a running run's output: its SSE stream through fetch (the key goes in a header), resumed after a
// dropped connection or a rotated stream with Last-Event-ID, so every event arrives once: no text is repeated.

import { ApiError, headers, serverSentEvents, signedOut, url } from "./api.js";

const FINAL = /^run\.(completed|failed|incomplete|cancelled|requires_action|expired)$/;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follow run `runId` from the start. Callbacks: text(delta), status(status), state(words, connections),
 * end(run or null). Returns {stop()}; `lastEventId` and `connections` are readable for the page's diagnostics.
 */
export function follow(runId, { text, status, state, end }) {
  const follower = { lastEventId: null, connections: 0, stopped: false, controller: null };
  follower.stop = () => {
    follower.stopped = true;
    if (follower.controller) follower.controller.abort();
  };

  async function connect() {
    follower.controller = new AbortController();
    const extra = { Accept: "text/event-stream" };
    if (follower.lastEventId !== null) extra["Last-Event-ID"] = follower.lastEventId;
    const response = await fetch(url(`runs/${encodeURIComponent(runId)}/stream`), {
      headers: headers(undefined, extra), cache: "no-store", signal: follower.controller.signal,
    });
    if (!response.ok) {
      if (response.status === 401) signedOut.dispatchEvent(new Event("signed-out"));
      throw new ApiError(response.status, await response.json().catch(() => null));
    }
    follower.connections += 1;
    state("streaming", follower.connections);
    for await (const event of serverSentEvents(response.body)) {
      if (event.id !== null) follower.lastEventId = event.id;
      const data = JSON.parse(event.data);
      if (event.type === "output_text.delta") text(data.delta);
      else if (event.type === "run.created") status(data.run.status);
      else if (event.type === "run.status") status(data.status);
      else if (event.type === "reconnect") return "rotated";
      else if (event.type === "end") return { run: null };
      else if (FINAL.test(event.type)) return { run: data.run };
    }
    return "cut";  // closed without a final event: the connection broke
  }

  (async () => {
    let delay = 250;
    while (!follower.stopped) {
      try {
        const outcome = await connect();
        if (typeof outcome === "object") {
          follower.stopped = true;
          end(outcome.run);
          return;
        }
        if (outcome === "rotated") { delay = 250; continue; }  // the server asked for a new connection now
      } catch (error) {
        if (follower.stopped) return;
        if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
          follower.stopped = true;
          state(`stream refused: ${error.message}`, follower.connections);
          end(null);
          return;
        }
      }
      if (follower.stopped) return;
      state("reconnecting", follower.connections);
      await sleep(delay);
      delay = Math.min(delay * 2, 4000);
    }
  })();
  return follower;
}
