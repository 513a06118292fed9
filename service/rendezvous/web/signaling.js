// A small client for Rendezvous' signaling WebSocket (the wire protocol of DESIGN.md
// section 3). It knows nothing of the DOM or of RTCPeerConnection, so other pages (and a
// resume helper later) can use it as it is.
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
