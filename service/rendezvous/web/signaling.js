// A small client for Rendezvous' signaling WebSocket (the wire protocol of DESIGN.md
// section 3), and the resume helper around it (ResumingSignaling, below; README "Resuming a
// session"). Neither knows the DOM or RTCPeerConnection, so other pages can use them as
// they are.
//
//   const client = new SignalingClient({ url: signalingUrl(base, room), token });
//   client.addEventListener("frame", (e) => handle(e.detail));   // every server frame
//   client.addEventListener("server-error", (e) => e.detail);    // {code, message}
//   client.addEventListener("close", (e) => e.detail);           // see CloseDetail below
//   await client.connect();          // resolves once open; rejects if it never opens
//   client.send("offer", { type: "offer", sdp, target_user_id: "bob" });
//   client.close();                  // 1000; no error is reported for a close we asked for
//
// The token travels as the `bearer.<JWT>` subprotocol beside `rendezvous.v1`, which keeps
// it out of URLs and proxy logs (a browser cannot set an Authorization header here).

export const SUBPROTOCOL = "rendezvous.v1";
export const BEARER_PREFIX = "bearer.";
export const NORMAL_CLOSURE = 1000;

/**
 * The WebSocket URL of `roomId` for a service whose HTTP base is `base` (a URL ending
 * in "/"), with the scheme mapped: http → ws, https → wss.
 */
export function signalingUrl(base, roomId) {
  const url = new URL(`webrtc/ws/${encodeURIComponent(roomId)}`, base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/**
 * One signaling connection. States: "idle" → "connecting" → "open" → "closed".
 *
 * Events (CustomEvent, payload in `detail`):
 * - "open": the socket is open (the server's `room_state` follows as a "frame");
 * - "frame": a parsed server frame `{type, payload, sender_id, room_id, timestamp}`;
 * - "server-error": an `error` frame's payload `{code, message}` (also sent as "frame");
 * - "close": CloseDetail `{code, reason, errorCode, wasOpen, byClient}`, where errorCode
 *   is the server's error code when an `error` frame was the last frame before the close
 *   (the server sends it just before closing), else null.
 */
export class SignalingClient extends EventTarget {
  constructor({ url, token }) {
    super();
    this.url = url;
    this.token = token;
    this.state = "idle";
    this.socket = null;
    this.lastFrame = null;
    this.closeRequested = false;
  }

  /** Open the socket; resolves on open, rejects with SignalingClosedError otherwise. */
  connect() {
    if (this.state !== "idle") {
      return Promise.reject(new Error(`connect() called in state ${this.state}`));
    }
    this.state = "connecting";
    return new Promise((resolve, reject) => {
      let socket;
      try {
        socket = new WebSocket(this.url, [SUBPROTOCOL, BEARER_PREFIX + this.token]);
      } catch (error) {
        // A malformed URL or token (characters a subprotocol may not hold).
        this.state = "closed";
        reject(error);
        return;
      }
      this.socket = socket;
      socket.addEventListener("open", () => {
        this.state = "open";
        this.#emit("open", {});
        resolve();
      });
      socket.addEventListener("message", (event) => this.#onMessage(event));
      socket.addEventListener("close", (event) => {
        const wasOpen = this.state === "open";
        this.state = "closed";
        const last = this.lastFrame;
        const detail = {
          code: event.code,
          reason: event.reason,
          errorCode: last && last.type === "error" ? last.payload?.code ?? null : null,
          wasOpen,
          byClient: this.closeRequested,
        };
        this.#emit("close", detail);
        if (!wasOpen) reject(new SignalingClosedError(detail));
      });
    });
  }

  /** Send one frame; false (nothing sent) when the socket is not open. */
  send(type, payload) {
    if (this.state !== "open") return false;
    this.socket.send(JSON.stringify({ type, payload }));
    return true;
  }

  /** Close by our own choice: the "close" event then has byClient = true. */
  close(code = NORMAL_CLOSURE, reason = "") {
    this.closeRequested = true;
    if (this.socket && this.state !== "closed") this.socket.close(code, reason);
    else this.state = "closed";
  }

  #onMessage(event) {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (error) {
      // The server only sends JSON; anything else is a bug worth seeing, not a crash.
      console.warn("rendezvous: ignoring a frame that is not JSON", error);
      return;
    }
    if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") {
      console.warn("rendezvous: ignoring a frame without a type", frame);
      return;
    }
    this.lastFrame = frame;
    this.#emit("frame", frame);
    if (frame.type === "error") this.#emit("server-error", frame.payload ?? {});
  }

  #emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}

/** connect() failed: the socket closed before it opened; `detail` is the CloseDetail. */
export class SignalingClosedError extends Error {
  constructor(detail) {
    super(`the signaling connection closed before it opened (code ${detail.code})`);
    this.name = "SignalingClosedError";
    this.detail = detail;
  }
}

// ------------------------------------------------------------------------------ resuming
//
// ResumingSignaling keeps one participant session alive across signaling blinks (a drained
// instance, a proxy restart, a flaky network). It remembers the latest `seq`, `session_id`
// and `resume_token`; on an unexpected close it reconnects with `resume=` and `last_seq=`
// (capped, jittered backoff, within the server's grace window), drops replayed frames it
// has already delivered (by seq), and holds what the page sends meanwhile (bounded) until
// the session is back. The page's RTCPeerConnections are peer to peer and keep flowing
// while signaling blinks, so nothing is torn down. A refused resume (`resume_failed`), or
// a window that ran out, falls back to a fresh join: the page sees a `room_state` without
// `resumed` and rebuilds its call.
//
//   const signaling = new ResumingSignaling({ url, token });
//   signaling.addEventListener("frame", ...);     // as SignalingClient, minus duplicates
//   signaling.addEventListener("resuming", ...);  // {attempt, code, errorCode, delayMs, mode}
//   signaling.addEventListener("resumed", ...);   // {missed}: the session is back
//   signaling.addEventListener("close", ...);     // the end: CloseDetail of the drop
//   await signaling.connect();

export const RESUME_FAILED = "resume_failed";
export const DEFAULT_RESUME_GRACE_MS = 10000; // the server's WEBRTC_RESUME_GRACE default
export const RESUME_BACKOFF = { baseMs: 250, capMs: 2000 };
const MAX_OUTBOX = 256; // frames the page sends while the socket is down; more are dropped

// A drop the server holds the participant through (DESIGN.md "Errors and close codes"):
// no close frame (1005, 1006), internal error, restart/drain, overload, a bad gateway.
// Not resumable: our own close, a leave (1000, 1001), a refusal (1008), protocol errors
// (1002, 1003, 1007, 1009), replaced/kicked/closed/refused resume (4001-4004).
const RESUMABLE_CLOSE_CODES = new Set([1005, 1006, 1011, 1012, 1013, 1014]);

/** Whether a CloseDetail is a drop worth resuming (see RESUMABLE_CLOSE_CODES). */
export function isResumableClose({ code, byClient }) {
  return !byClient && RESUMABLE_CLOSE_CODES.has(code);
}

/** The wait before reconnect attempt `attempt` (0, 1, ...): half to all of
 * min(cap, base * 2^attempt), so a drained instance's clients do not return at once. */
export function resumeDelay(attempt, { baseMs, capMs } = RESUME_BACKOFF, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** `url` with the resume parameters (a fresh join when `resumeToken` is null). */
export function resumeUrl(url, resumeToken, lastSeq) {
  const resumed = new URL(url);
  resumed.searchParams.delete("resume");
  resumed.searchParams.delete("last_seq");
  if (resumeToken) {
    resumed.searchParams.set("resume", resumeToken);
    if (lastSeq > 0) resumed.searchParams.set("last_seq", String(lastSeq));
  }
  return resumed.href;
}

/**
 * One participant session over as many sockets as it takes. States: "idle" →
 * "connecting" → "open" ⇄ "resuming" → "closed"; `mode` is "resume" while the reconnects
 * carry the resume token, "join" once they are fresh joins.
 */
export class ResumingSignaling extends EventTarget {
  constructor({ url, token, graceMs = DEFAULT_RESUME_GRACE_MS, backoff = RESUME_BACKOFF }) {
    super();
    this.url = url;
    this.token = token;
    this.graceMs = graceMs;
    this.backoff = backoff;
    this.state = "idle";
    this.mode = null;
    this.sessionId = null;
    this.resumeToken = null;
    this.lastSeq = 0; // the highest seq delivered to the page
    this.resumed = 0; // sessions restored by a resume
    this.rejoined = 0; // sessions started over by a fresh join after a drop
    this.duplicates = 0; // replayed frames dropped because they were delivered already
    this.client = null; // the SignalingClient of the current socket
    this.outbox = [];
    this.drop = null; // {detail, at, attempt, deadline} while resuming
    this.timer = null;
  }

  /** The first join; resolves once its socket is open (as SignalingClient.connect). */
  connect() {
    this.state = "connecting";
    return this.#open(this.url);
  }

  /** Send one frame; while resuming it waits (bounded) for the session to come back. */
  send(type, payload) {
    if (this.state === "open") return this.client.send(type, payload);
    if (this.state !== "resuming" || this.mode !== "resume") return false;
    if (this.outbox.length >= MAX_OUTBOX) return false;
    this.outbox.push([type, payload]);
    return true;
  }

  /** Leave (1000 by default): no resume follows; the "close" event has byClient = true. */
  close(code = NORMAL_CLOSURE, reason = "") {
    const wasClosed = this.state === "closed";
    this.state = "closed";
    clearTimeout(this.timer);
    this.outbox = [];
    if (this.client && this.client.state !== "closed") {
      this.client.close(code, reason);
    } else if (!wasClosed) {
      this.#emit("close", { code, reason, errorCode: null, wasOpen: false, byClient: true });
    }
  }

  #open(url) {
    const client = new SignalingClient({ url, token: this.token });
    this.client = client;
    const current = () => this.client === client;
    client.addEventListener("frame", ({ detail }) => current() && this.#onFrame(detail));
    client.addEventListener("close", ({ detail }) => current() && this.#onClose(detail));
    return client.connect();
  }

  #onFrame(frame) {
    const payload = frame.payload ?? {};
    if (frame.type === "room_state") return this.#onRoomState(frame, payload);
    // Only a session's own frames are deduplicated: a reconnect's refusal (before any
    // room_state) counts on a socket of its own.
    if (Number.isInteger(frame.seq) && this.state === "open") {
      if (frame.seq <= this.lastSeq) {
        this.duplicates += 1; // delivered before the drop, replayed after it
        return;
      }
      this.lastSeq = frame.seq;
    }
    if (frame.type === "error" && payload.code === RESUME_FAILED) {
      // The close that follows falls back to a fresh join; the page has nothing to show.
      console.info("rendezvous: resume refused:", payload.message);
      return;
    }
    this.#emit("frame", frame);
    if (frame.type === "error") this.#emit("server-error", payload);
  }

  #onRoomState(frame, payload) {
    // A resumed room_state opens the replay (frames with their original seq follow), so
    // only a fresh session's room_state sets where the count starts.
    const resumed = payload.resumed === true;
    if (!resumed && Number.isInteger(frame.seq)) this.lastSeq = frame.seq;
    else if (!resumed) this.lastSeq = 0;
    this.sessionId = payload.session_id ?? null;
    this.resumeToken = payload.resume_token ?? null; // a new one each time: the old is spent
    const wasDropped = this.state === "resuming";
    this.state = "open";
    this.drop = null;
    if (resumed) this.resumed += 1;
    else if (wasDropped) this.rejoined += 1;
    const held = resumed ? this.outbox.splice(0) : [];
    this.outbox = [];
    this.#emit("frame", frame);
    if (resumed) {
      this.#emit("resumed", { missed: payload.missed === true, sessionId: this.sessionId });
      for (const [type, body] of held) this.client.send(type, body);
    }
  }

  #onClose(detail) {
    if (this.state === "closed") {
      if (detail.byClient) this.#emit("close", detail); // our own close() finished
      return;
    }
    if (this.state === "resuming") return this.#onAttemptClosed(detail);
    const joined = this.state === "open" && this.resumeToken !== null;
    if (!joined || !isResumableClose(detail)) return this.#end(detail);
    this.state = "resuming";
    this.mode = "resume";
    const at = Date.now();
    this.drop = { detail, at, attempt: 0, deadline: at + this.graceMs };
    this.#schedule(detail);
  }

  /** A reconnect attempt's socket closed before its session was back. */
  #onAttemptClosed(detail) {
    const drop = this.drop;
    if (detail.errorCode === RESUME_FAILED) {
      // Spent, expired or unknown: the participant has left the room; join it afresh,
      // with a window of its own (the instance may be busy too).
      this.#startOver(Date.now() + this.graceMs);
      drop.attempt = 0;
    } else if (detail.wasOpen && !isResumableClose(detail)) {
      return this.#end(detail); // refused: a token that expired meanwhile, a full room...
    } else if (Date.now() >= drop.deadline) {
      if (this.mode === "join") return this.#end(drop.detail); // tell why it all began
      // Past the grace a resume can only be refused: one fresh join, at once.
      this.#startOver(Date.now());
    }
    this.#schedule(detail);
  }

  #startOver(deadline) {
    this.mode = "join";
    this.resumeToken = null;
    this.drop.deadline = deadline;
    this.outbox = []; // the page rebuilds its call: what it queued is moot
  }

  #schedule(detail) {
    const drop = this.drop;
    const room = Math.max(0, drop.deadline - Date.now());
    const delayMs = Math.min(room, resumeDelay(drop.attempt, this.backoff));
    const { attempt } = drop;
    drop.attempt += 1;
    const { code, errorCode } = detail;
    this.#emit("resuming", { attempt, code, errorCode, delayMs, mode: this.mode });
    this.timer = setTimeout(() => {
      if (this.state !== "resuming") return;
      const token = this.mode === "resume" ? this.resumeToken : null;
      const url = resumeUrl(this.url, token, this.lastSeq);
      // A socket that never opens reports through its close event (→ #onAttemptClosed).
      this.#open(url).catch(() => {});
    }, delayMs);
  }

  #end(detail) {
    this.state = "closed";
    this.drop = null;
    this.outbox = [];
    this.#emit("close", detail);
  }

  #emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}
