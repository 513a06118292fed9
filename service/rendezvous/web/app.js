// The demo page: the DOM on one side, the signaling client (signaling.js) and the mesh
// call (mesh.js) on the other. Query parameters prefill and drive it: room, name, token,
// autojoin=1 (join on load), media=0 (no camera: data channel only), stats_ms=N (send a
// call-quality report per connected peer every N ms, default 5000; 0: none),
// resume_grace_ms=N (how long to try to resume a dropped session; default 10000, the
// server's default WEBRTC_RESUME_GRACE: set it to the server's when that differs).
//
// Signaling blinks (a drained instance, a lost connection) are resumed by signaling.js's
// ResumingSignaling: #status says "resuming" meanwhile, the call (peer to peer) goes on
// untouched, and the frames replayed after the resume reach the mesh as usual.

import { ApiError, fetchDevMode, fetchIceConfig, mintDevToken, toRtcConfiguration, tokenSubject } from "./api.js";
import { Mesh } from "./mesh.js";
import { describeClose, describeError } from "./messages.js";
import {
  DEFAULT_RESUME_GRACE_MS,
  ResumingSignaling,
  SignalingClosedError,
  signalingUrl,
} from "./signaling.js";
import { STATS_INTERVAL_MS, StatsReporter } from "./stats.js";

const ROOM_ID = /^[A-Za-z0-9-]{1,64}$/; // the server's rule; checked here only to explain it
const BASE = new URL("..", document.baseURI); // the service's root, also behind a path prefix

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("join-form"),
  room: $("room"),
  name: $("name"),
  token: $("token"),
  tokenField: $("token-field"),
  join: $("join"),
  leave: $("leave"),
  mode: $("mode"),
  status: $("status"),
  error: $("error"),
  participants: $("participants"),
  peers: $("peers"),
  localVideo: $("local-video"),
  chatForm: $("chat-form"),
  chatInput: $("chat-input"),
  chatSend: $("chat-send"),
  chatLog: $("chat-log"),
  peerTemplate: $("peer-template"),
};
const params = new URLSearchParams(location.search);
const withMedia = params.get("media") !== "0";
const statsIntervalMs = Number(params.get("stats_ms") ?? STATS_INTERVAL_MS);
const resumeGraceMs = Number(params.get("resume_grace_ms") ?? DEFAULT_RESUME_GRACE_MS);

// For tests and debugging (the DOM contract): who we are, where, and every connection.
const app = {
  userId: null,
  roomId: null,
  peers: new Map(),
  config: null,
  devMode: null,
  signaling: null,
  mesh: null,
  stats: null, // the StatsReporter
  resumed: 0, // signaling sessions restored by a resume (the call went on)
  rejoined: 0, // sessions started over after a drop whose resume was refused
};
window.rendezvous = app;

let attempt = 0; // bumped by every join and leave: an older join's late steps stand down
let localStream = null;
const names = new Map(); // user_id → username, for chat lines
const replayedJoins = new Set(); // see onResumed

// ---------------------------------------------------------------------------- status

const STATUS_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  joined: "Joined",
  closed: "Left the room",
  error: "Disconnected",
  resuming: "Reconnecting…",
};

function setStatus(state, text = STATUS_TEXT[state]) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
  const busy = state === "connecting" || state === "joined" || state === "resuming";
  ui.join.disabled = busy;
  ui.leave.disabled = !busy;
  for (const input of [ui.room, ui.name, ui.token]) input.disabled = busy;
}

function showError(code, message) {
  ui.error.dataset.code = String(code);
  ui.error.textContent = message;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
  ui.error.title = "";
  delete ui.error.dataset.code;
}

function showApiError(error) {
  if (error instanceof ApiError) {
    showError(error.code, describeError(error.code, error.message));
  } else {
    console.error("rendezvous:", error);
    showError("page_error", `${describeError("page_error")} (${error.message})`);
  }
}

// ---------------------------------------------------------------------------- joining

async function join() {
  if (ui.join.disabled) return; // already connecting or joined
  const current = ++attempt;
  const stale = () => current !== attempt;
  clearError();
  const roomId = ui.room.value.trim();
  if (!roomId) return showError("room_required", describeError("room_required"));
  if (!ROOM_ID.test(roomId)) return showError("forbidden_room", describeError("forbidden_room"));
  setStatus("connecting");
  try {
    const credentials = await obtainToken();
    if (stale()) return;
    const config = await fetchIceConfig(BASE, credentials.token);
    if (stale()) return;
    app.config = config;
    const stream = withMedia ? await openMedia() : null;
    if (stale()) return stopMedia(stream);
    localStream = stream;
    ui.localVideo.srcObject = stream;
    await connect(current, roomId, credentials, toRtcConfiguration(config));
  } catch (error) {
    if (stale()) return;
    if (error instanceof SignalingClosedError) return; // the close handler has said why
    teardown();
    setStatus("error");
    showApiError(error);
  }
}

/** {token, userId}: the `token` parameter or field wins; else dev mode mints one. */
async function obtainToken() {
  const pasted = ui.token.value.trim();
  if (pasted) {
    const userId = tokenSubject(pasted);
    if (!userId) throw new ApiError("unauthorized", "that token is not a JWT with a `sub` claim");
    return { token: pasted, userId };
  }
  if (!(await devModeKnown)) throw new ApiError("token_required", describeError("token_required"));
  const minted = await mintDevToken(BASE, ui.name.value);
  return { token: minted.token, userId: minted.user_id };
}

async function openMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    showError("media_unavailable", `${describeError("media_unavailable")} (It needs https or localhost.)`);
    return null;
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  } catch (error) {
    console.warn("rendezvous: getUserMedia failed", error);
    showError("media_unavailable", `${describeError("media_unavailable")} (${error.name})`);
    return null;
  }
}

async function connect(current, roomId, credentials, rtcConfig) {
  const url = signalingUrl(BASE, roomId);
  const token = credentials.token;
  const signaling = new ResumingSignaling({ url, token, graceMs: resumeGraceMs });
  const mesh = new Mesh({
    selfId: credentials.userId,
    rtcConfig,
    localStream,
    send: (type, payload) => signaling.send(type, payload),
  });
  const stats = new StatsReporter({
    peers: mesh.peers,
    send: (type, payload) => signaling.send(type, payload),
    intervalMs: statsIntervalMs,
  });
  Object.assign(app, { userId: credentials.userId, roomId, peers: mesh.peers, signaling, mesh, stats });
  watchMesh(mesh);
  stats.start();
  signaling.addEventListener("frame", ({ detail }) => {
    if (current !== attempt) return;
    try {
      onFrame(mesh, detail);
    } catch (error) {
      // E.g. an RTCConfiguration the browser refuses: say so rather than hang in silence.
      showApiError(error);
    }
  });
  signaling.addEventListener("close", ({ detail }) => {
    if (current === attempt && !detail.byClient) onClosed(detail);
  });
  signaling.addEventListener("resuming", ({ detail }) => {
    if (current !== attempt) return;
    if (detail.attempt === 0) console.info(`rendezvous: signaling dropped (${detail.code})`);
    const text = detail.mode === "resume" ? STATUS_TEXT.resuming : "Reconnecting (joining again)…";
    setStatus("resuming", text);
  });
  await signaling.connect();
}

function onFrame(mesh, frame) {
  const payload = frame.payload ?? {};
  switch (frame.type) {
    case "room_state":
      onRoomState(mesh, payload);
      break;
    case "user_joined":
      // After a resume with `missed: true`, a replayed user_joined can name someone the
      // room_state already gave us (and we called): it is old news, not a second session.
      if (replayedJoins.delete(payload.user_id)) break;
      addParticipant(payload.user_id, payload.username);
      mesh.addParticipant(payload.user_id, payload.username, { initiate: false });
      break;
    case "user_left":
      removeParticipant(payload.user_id);
      mesh.removeParticipant(payload.user_id);
      break;
    case "offer":
    case "answer":
    case "ice_candidate":
      mesh.handleSignal(frame);
      break;
    case "error":
      // A dropped frame (the connection stays) or the reason for the close that follows.
      console.warn("rendezvous: server error", payload);
      showError(payload.code, describeError(payload.code, payload.message));
      ui.error.title = payload.message ?? "";
      break;
    default:
      break; // pong, and types a later server may add
  }
}

function onRoomState(mesh, payload) {
  const participants = payload.participants ?? [];
  const me = participants.find((p) => p.user_id === app.userId);
  setStatus("joined", `Joined room "${app.roomId}" as ${me?.username ?? app.userId}`);
  if (payload.resumed === true) return onResumed(mesh, payload, participants);
  if (mesh.peers.size > 0 || ui.participants.children.length > 0) {
    // A fresh join after a drop whose resume was refused: the others saw us leave, so
    // our connections are dead to them. Hang up and, as the joiner, call everyone afresh.
    app.rejoined += 1;
    mesh.close();
    ui.participants.replaceChildren();
    names.clear();
    replayedJoins.clear();
  }
  for (const { user_id: userId, username } of participants) {
    addParticipant(userId, username);
    // We are the joiner: we offer to everyone already here; they wait for us.
    mesh.addParticipant(userId, username, { initiate: true });
  }
}

/**
 * The session is back: the call never stopped, and the frames we missed are replayed
 * after this one. With `missed: true` some were lost: the room as it is now (this
 * room_state) wins over our lists, and connections that may have lost a signal renegotiate.
 */
function onResumed(mesh, payload, participants) {
  app.resumed += 1;
  if (payload.missed !== true) return;
  const present = new Map(participants.map((p) => [p.user_id, p.username]));
  for (const userId of [...mesh.peers.keys()]) {
    if (!present.has(userId)) {
      removeParticipant(userId);
      mesh.removeParticipant(userId);
    }
  }
  for (const [userId, username] of present) {
    const known = mesh.peers.has(userId) || userId === app.userId;
    addParticipant(userId, username);
    if (!known) {
      // Someone joined while we were away: their offer may be what was lost. Ours
      // crosses theirs at worst, which perfect negotiation resolves.
      mesh.addParticipant(userId, username, { initiate: true });
      replayedJoins.add(userId);
    } else if (userId !== app.userId && mesh.peers.get(userId).pc.connectionState !== "connected") {
      mesh.peers.get(userId).pc.restartIce(); // a lost answer or candidate: negotiate again
    }
  }
}

function onClosed({ code, errorCode }) {
  teardown();
  if (errorCode) {
    showError(errorCode, describeError(errorCode));
    setStatus("error");
  } else {
    showError(code, describeClose(code));
    setStatus(code === 1000 ? "closed" : "error");
  }
}

function leave() {
  attempt += 1;
  app.signaling?.close(1000, "left");
  teardown();
  clearError();
  setStatus("closed");
}

/** Hang up, release the camera, empty the lists (the error, if any, stays shown). */
function teardown() {
  app.stats?.stop();
  app.stats = null;
  app.mesh?.close();
  app.signaling?.close();
  app.mesh = null;
  app.signaling = null;
  stopMedia(localStream);
  localStream = null;
  ui.localVideo.srcObject = null;
  ui.participants.replaceChildren();
  ui.peers.replaceChildren();
  names.clear();
  replayedJoins.clear();
  updateChatSend(0);
}

function stopMedia(stream) {
  for (const track of stream?.getTracks() ?? []) track.stop();
}

// ---------------------------------------------------------------------------- participants

function addParticipant(userId, username) {
  names.set(userId, username);
  let item = participantItem(userId);
  if (!item) {
    item = document.createElement("li");
    item.dataset.userId = userId;
    if (userId === app.userId) item.dataset.self = "true";
    ui.participants.append(item);
  }
  item.textContent = username;
}

function removeParticipant(userId) {
  participantItem(userId)?.remove();
}

function participantItem(userId) {
  return [...ui.participants.children].find((item) => item.dataset.userId === userId) ?? null;
}

// ---------------------------------------------------------------------------- peers

function watchMesh(mesh) {
  mesh.addEventListener("peer-added", ({ detail: { peer } }) => {
    const tile = ui.peerTemplate.content.firstElementChild.cloneNode(true);
    tile.dataset.userId = peer.userId;
    const video = tile.querySelector("video");
    video.muted = true; // the property, not only the attribute: autoplay needs it
    ui.peers.append(tile);
    renderPeer(peer);
  });
  mesh.addEventListener("peer-removed", ({ detail: { userId } }) => peerTile(userId)?.remove());
  mesh.addEventListener("peer-state", ({ detail: { peer } }) => renderPeer(peer));
  mesh.addEventListener("track", ({ detail: { peer, stream } }) => {
    const tile = peerTile(peer.userId);
    if (!tile) return;
    for (const element of tile.querySelectorAll("video, audio")) {
      if (element.srcObject !== stream) element.srcObject = stream;
      // Autoplay may be refused (no user gesture yet with autojoin=1); video is muted and plays.
      element.play().catch(() => {});
    }
  });
  mesh.addEventListener("chat", ({ detail: { from, text } }) => appendChat(from, text, false));
  mesh.addEventListener("channels", ({ detail: { open } }) => updateChatSend(open));
  mesh.addEventListener("warning", ({ detail: { userId, message, error } }) => {
    console.warn(`rendezvous: peer ${userId}: ${message}`, error ?? "");
  });
}

function renderPeer(peer) {
  const tile = peerTile(peer.userId);
  if (!tile) return;
  tile.querySelector(".peer-name").textContent = peer.username;
  const fields = {
    "connection-state": peer.pc.connectionState,
    "ice-state": peer.pc.iceConnectionState,
    "signaling-state": peer.pc.signalingState,
  };
  for (const [field, value] of Object.entries(fields)) {
    const element = tile.querySelector(`[data-field="${field}"]`);
    element.textContent = value;
    element.dataset.state = value;
  }
}

function peerTile(userId) {
  return [...ui.peers.children].find((tile) => tile.dataset.userId === userId) ?? null;
}

// ---------------------------------------------------------------------------- chat

function sendChat() {
  const text = ui.chatInput.value;
  if (!text.trim() || !app.mesh) return;
  if (app.mesh.sendChat(text) === 0) return; // nobody to hear it (the button is off then)
  appendChat(app.userId, text, true);
  ui.chatInput.value = "";
}

function appendChat(from, text, self) {
  const item = document.createElement("li");
  item.dataset.from = from;
  item.dataset.name = names.get(from) ?? from;
  if (self) item.dataset.self = "true";
  item.textContent = text;
  ui.chatLog.append(item);
  item.scrollIntoView({ block: "nearest" });
}

function updateChatSend(open) {
  ui.chatSend.disabled = open === 0;
  ui.chatSend.title = open === 0 ? "Nobody is connected yet" : `Sends to ${open} peer(s)`;
}

// ---------------------------------------------------------------------------- start

ui.room.value = params.get("room") ?? "demo";
ui.name.value = params.get("name") ?? `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
ui.token.value = params.get("token") ?? "";
ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  join();
});
ui.leave.addEventListener("click", leave);
ui.chatForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sendChat();
});

const devModeKnown = fetchDevMode(BASE).catch((error) => {
  console.warn("rendezvous: could not ask the server for dev mode", error);
  return false;
});
devModeKnown.then((devMode) => {
  app.devMode = devMode;
  ui.tokenField.hidden = devMode && !ui.token.value;
  ui.mode.textContent = devMode
    ? "Dev mode: the server hands out a token for your name."
    : "Paste a token to join (this server is not in dev mode).";
});
setStatus("idle");
if (params.get("autojoin") === "1") join();
