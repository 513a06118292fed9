// Scenarios for signaling.js's ResumingSignaling, run by Node against a scripted WebSocket
// (tests/api/test_demo.py runs one per process: `node resume_helper.mjs <scenario>`; exit
// 0 = it held). The real server and browser run it in tests/browser/test_demo_resume.py;
// here each rule of the client contract is pinned on its own: which closes resume, the
// resume URL, seq dedupe, the outbox, resume_failed → fresh join, the grace window.
import assert from "node:assert/strict";

const WEB = new URL(process.argv[3] ?? "../../../service/rendezvous/web/", import.meta.url);

// A WebSocket whose server side the scenario plays: open(), receive(frame), drop(code).
class ScriptedSocket extends EventTarget {
  static made = [];

  constructor(url, protocols) {
    super();
    this.url = new URL(url);
    this.protocols = protocols;
    this.sent = [];
    this.closedWith = null;
    ScriptedSocket.made.push(this);
  }

  open() {
    this.dispatchEvent(new Event("open"));
  }

  receive(frame) {
    this.dispatchEvent(Object.assign(new Event("message"), { data: JSON.stringify(frame) }));
  }

  drop(code, reason = "") {
    this.dispatchEvent(Object.assign(new Event("close"), { code, reason }));
  }

  send(data) {
    this.sent.push(JSON.parse(data));
  }

  close(code = 1005, reason = "") {
    this.closedWith = code;
    this.drop(code, reason);
  }
}
globalThis.WebSocket = ScriptedSocket;

const { ResumingSignaling, isResumableClose, resumeDelay, RESUME_BACKOFF } = await import(
  new URL("signaling.js", WEB).href
);

const URL_BASE = "ws://127.0.0.1:1/webrtc/ws/room-1";
const FAST = { baseMs: 1, capMs: 4 };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const latest = () => ScriptedSocket.made.at(-1);

function roomState(seq, extra = {}) {
  return {
    type: "room_state",
    seq,
    sender_id: "server",
    payload: { participants: [{ user_id: "alice" }], session_id: "s-1", resume_token: `rt-${seq}`, ...extra },
  };
}

const relayed = (seq, n) => ({ type: "offer", seq, sender_id: "bob", payload: { n } });

/** A helper joined with room_state seq 1; `events` records what the page would see. */
async function joined(options = {}) {
  const signaling = new ResumingSignaling({ url: URL_BASE, token: "jwt", backoff: FAST, ...options });
  const events = [];
  for (const name of ["frame", "resuming", "resumed", "close"]) {
    signaling.addEventListener(name, ({ detail }) => events.push({ name, detail }));
  }
  const opened = signaling.connect();
  latest().open();
  await opened;
  latest().receive(roomState(1));
  return { signaling, events, frames: () => events.filter((e) => e.name === "frame").map((e) => e.detail) };
}

/** The socket made after the first `count` ones, once there is one (bounded wait). */
async function nextSocket(count, timeoutMs = 2000) {
  const deadline = Date.now() + timeoutMs;
  while (ScriptedSocket.made.length <= count) {
    assert.ok(Date.now() < deadline, "no reconnect attempt");
    await sleep(1);
  }
  return ScriptedSocket.made[count];
}

const scenarios = {
  async drop_resumes_with_token_and_last_seq_and_dedupes_replay() {
    const { signaling, events, frames } = await joined();
    const first = latest();
    first.receive(relayed(2, "a"));
    first.receive(relayed(3, "b"));
    first.drop(1012);
    assert.equal(signaling.state, "resuming");
    assert.equal(signaling.send("answer", { n: "queued" }), true); // held for the session
    const second = await nextSocket(1);
    assert.equal(second.url.searchParams.get("resume"), "rt-1");
    assert.equal(second.url.searchParams.get("last_seq"), "3");
    assert.deepEqual(second.protocols, ["rendezvous.v1", "bearer.jwt"]);
    second.open();
    assert.equal(second.sent.length, 0, "nothing is sent before the session is back");
    second.receive(roomState(9, { resumed: true, missed: false, resume_token: "rt-new" }));
    assert.deepEqual(second.sent, [{ type: "answer", payload: { n: "queued" } }]);
    second.receive(relayed(3, "b")); // delivered before the drop: dropped
    second.receive(relayed(4, "c"));
    assert.deepEqual(frames().filter((f) => f.type === "offer").map((f) => f.payload.n), ["a", "b", "c"]);
    assert.equal(signaling.resumed, 1);
    assert.equal(signaling.duplicates, 1);
    assert.equal(signaling.resumeToken, "rt-new");
    assert.deepEqual(events.find((e) => e.name === "resumed").detail, { missed: false, sessionId: "s-1" });
    assert.ok(!events.some((e) => e.name === "close"), "no close reached the page");
    // The next drop spends the new token.
    second.drop(1006);
    const third = await nextSocket(2);
    assert.equal(third.url.searchParams.get("resume"), "rt-new");
    assert.equal(third.url.searchParams.get("last_seq"), "4");
    signaling.close();
  },

  async final_closes_are_not_resumed() {
    for (const code of [1000, 1001, 1002, 1007, 1008, 1009, 4001, 4002, 4003, 4004]) {
      const { signaling, events } = await joined();
      const made = ScriptedSocket.made.length;
      latest().drop(code);
      await sleep(20);
      assert.equal(ScriptedSocket.made.length, made, `close ${code} was retried`);
      assert.equal(signaling.state, "closed");
      assert.deepEqual(events.filter((e) => e.name === "close").map((e) => e.detail.code), [code]);
    }
    for (const code of [1005, 1006, 1011, 1012, 1013, 1014]) {
      assert.ok(isResumableClose({ code, byClient: false }), `close ${code}`);
    }
    assert.ok(!isResumableClose({ code: 1006, byClient: true }));
  },

  async a_join_that_never_joined_is_not_resumed() {
    const signaling = new ResumingSignaling({ url: URL_BASE, token: "jwt", backoff: FAST });
    const closes = [];
    signaling.addEventListener("close", ({ detail }) => closes.push(detail.code));
    const opened = signaling.connect();
    latest().open();
    await opened;
    const made = ScriptedSocket.made.length;
    latest().drop(1013); // e.g. backend_unavailable on the join itself
    await sleep(20);
    assert.equal(ScriptedSocket.made.length, made);
    assert.deepEqual(closes, [1013]);
  },

  async resume_failed_falls_back_to_a_fresh_join() {
    const { signaling, events, frames } = await joined();
    latest().receive(relayed(2, "a"));
    latest().drop(1006);
    const attempt = await nextSocket(1);
    attempt.open();
    attempt.receive({ type: "error", seq: 1, payload: { code: "resume_failed", message: "unknown or expired resume token" } });
    attempt.drop(4004);
    const fresh = await nextSocket(2);
    assert.equal(fresh.url.searchParams.get("resume"), null);
    assert.equal(fresh.url.searchParams.get("last_seq"), null);
    assert.equal(signaling.send("offer", {}), false, "nothing is queued for a call being rebuilt");
    fresh.open();
    fresh.receive(roomState(1, { resume_token: "rt-fresh" }));
    fresh.receive(relayed(2, "fresh")); // seq counts again from the fresh room_state
    assert.equal(signaling.state, "open");
    assert.equal(signaling.rejoined, 1);
    assert.equal(signaling.resumed, 0);
    const types = frames().map((f) => f.type);
    assert.deepEqual(types, ["room_state", "offer", "room_state", "offer"]); // no resume_failed error
    assert.ok(!events.some((e) => e.name === "close"));
    assert.equal(signaling.resumeToken, "rt-fresh");
    signaling.close();
  },

  async the_grace_window_ends_in_one_fresh_join_then_the_original_close() {
    const { signaling, events } = await joined({ graceMs: 60 });
    latest().drop(1012);
    const started = Date.now();
    const urls = [];
    for (let made = ScriptedSocket.made.length; signaling.state === "resuming"; made += 1) {
      const socket = await nextSocket(made);
      urls.push(socket.url);
      socket.drop(1006); // a handshake refused (HTTP 503): never opened
    }
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 60, `gave up after ${elapsed} ms, before the grace`);
    assert.ok(urls.length >= 2, urls);
    assert.ok(urls.slice(0, -1).every((url) => url.searchParams.get("resume") === "rt-1"));
    assert.equal(urls.at(-1).searchParams.get("resume"), null, "the last try is a fresh join");
    const closes = events.filter((e) => e.name === "close").map((e) => e.detail.code);
    assert.deepEqual(closes, [1012], "the page is told of the drop that began it");
  },

  async leave_while_resuming_stops_retrying() {
    const { signaling, events } = await joined({ backoff: { baseMs: 50, capMs: 50 } });
    latest().drop(1006);
    const made = ScriptedSocket.made.length;
    signaling.close();
    await sleep(120);
    assert.equal(ScriptedSocket.made.length, made);
    assert.equal(signaling.state, "closed");
    assert.deepEqual(events.filter((e) => e.name === "close").map((e) => e.detail.byClient), [true]);
  },

  async backoff_is_jittered_and_capped() {
    assert.deepEqual(RESUME_BACKOFF, { baseMs: 250, capMs: 2000 });
    assert.equal(resumeDelay(0, RESUME_BACKOFF, () => 0), 125);
    assert.equal(resumeDelay(0, RESUME_BACKOFF, () => 1), 250);
    assert.equal(resumeDelay(2, RESUME_BACKOFF, () => 1), 1000);
    assert.equal(resumeDelay(10, RESUME_BACKOFF, () => 1), 2000);
    assert.equal(resumeDelay(10, RESUME_BACKOFF, () => 0), 1000);
  },
};

const name = process.argv[2];
assert.ok(name in scenarios, `unknown scenario ${name}; known: ${Object.keys(scenarios).join(", ")}`);
await scenarios[name]();
console.log(`ok ${name}`);
