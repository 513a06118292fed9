// The call: one RTCPeerConnection per remote participant (a full mesh), negotiated with
// the W3C "perfect negotiation" pattern so that both sides may offer at any time and
// glare (two offers crossing) resolves by itself. No DOM here: the page listens to the
// events below and draws.
//
// Who offers: a joiner offers to every participant already present (`room_state`); the
// others wait for its offer. Who yields on glare: the *polite* peer of a pair is the one
// whose user_id sorts lower (JavaScript string order, so both sides agree); it rolls its
// own offer back and answers. The impolite one ignores the colliding offer.
//
// Signaling goes through `send(type, payload)`; every offer, answer and candidate carries
// `target_user_id`. ICE is trickled: each candidate as it is gathered, then
// `candidate: ""` for end-of-candidates. Candidates that arrive before the remote
// description are kept (bounded) and added right after it.
//
// Chat: one RTCDataChannel labelled "chat" per peer (negotiated: false), opened by the
// side that offers first; plain UTF-8 text messages.
//
// Events (CustomEvent, payload in `detail`):
//   "peer-added" {peer}, "peer-removed" {userId}, "peer-state" {peer},
//   "track" {peer, stream}, "chat" {from, text}, "channels" {open} (peers reachable by chat),
//   "warning" {userId, message, error} (a failed step; the call goes on).

export const CHAT_LABEL = "chat";
const MAX_EARLY_CANDIDATES = 256; // per peer: a large mesh join stays well under this
const MAX_QUEUED_SIGNALS = 512; // per peer: signals waiting for the one before to finish
const MAX_ICE_RESTARTS = 3;
// An offer still unanswered after this long is sent again (a few times): a signaling
// resume that reported `missed: true` may have lost it, and an impolite peer waiting for
// its answer would otherwise ignore every offer of ours forever.
const OFFER_RESEND_MS = 5000;
const MAX_OFFER_RESENDS = 3;

/** One remote participant: `pc` and `channel` are what window.rendezvous exposes. */
export class Peer {
  constructor({ userId, username, polite, pc }) {
    this.userId = userId;
    this.username = username;
    this.polite = polite;
    this.pc = pc;
    this.channel = null; // the "chat" channel we send on (null until one exists)
    this.channels = new Set(); // every "chat" channel with this peer (two after glare)
    this.remoteStream = new MediaStream();
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswerPending = false;
    this.announced = false; // named by room_state or user_joined (not only by a signal)
    this.localMediaAdded = false;
    this.iceRestarts = 0;
    this.offers = 0; // offers we made (the newest is the one a resend may repeat)
    this.earlyCandidates = [];
    this.signals = Promise.resolve(); // signals from this peer, handled one at a time
    this.queued = 0;
    this.closed = false;
  }

  /** An open "chat" channel to send on, or null. */
  openChannel() {
    if (this.channel?.readyState === "open") return this.channel;
    for (const channel of this.channels) if (channel.readyState === "open") return channel;
    return null;
  }
}

export class Mesh extends EventTarget {
  /**
   * @param selfId this participant's user_id
   * @param rtcConfig the RTCConfiguration for every connection (from /webrtc/config)
   * @param localStream camera/microphone, or null to join with the data channel only
   * @param send (type, payload) => boolean: sends one signaling frame
   */
  constructor({ selfId, rtcConfig, localStream, send }) {
    super();
    this.selfId = selfId;
    this.rtcConfig = rtcConfig;
    this.localStream = localStream;
    this.send = send;
    this.peers = new Map();
  }

  /** A participant is in the room: `initiate` when we joined after them (we offer). */
  addParticipant(userId, username, { initiate }) {
    if (userId === this.selfId) return null;
    const existing = this.peers.get(userId);
    if (existing && existing.announced && !initiate) {
      // The same user joined again (a new session): its old connection is dead.
      this.removeParticipant(userId);
    } else if (existing) {
      // Known so far only by a signal that outran its user_joined: now we know its name.
      existing.announced = true;
      existing.username = username;
      this.#emit("peer-state", { peer: existing });
      return existing;
    }
    const peer = this.#createPeer(userId, username);
    peer.announced = true;
    if (initiate) {
      this.#addLocalMedia(peer, { receiveWhenSilent: true });
      this.#adoptChannel(peer, peer.pc.createDataChannel(CHAT_LABEL)); // → negotiationneeded
    }
    return peer;
  }

  /** A participant left: close its connection and forget it. */
  removeParticipant(userId) {
    const peer = this.peers.get(userId);
    if (!peer) return;
    peer.closed = true;
    this.peers.delete(userId);
    for (const channel of peer.channels) channel.close();
    peer.pc.close();
    this.#emit("peer-removed", { userId });
    this.#emitChannels();
  }

  /** An `offer`, `answer` or `ice_candidate` frame from the server. */
  handleSignal(frame) {
    const userId = frame.sender_id;
    if (!userId || userId === this.selfId) return;
    // A signal can precede the user_joined that names its sender: know the peer by id.
    const peer = this.peers.get(userId) ?? this.#createPeer(userId, userId);
    if (peer.queued >= MAX_QUEUED_SIGNALS) {
      this.#warn(peer, `dropped a ${frame.type}: too many signals waiting`);
      return;
    }
    peer.queued += 1;
    peer.signals = peer.signals
      .then(() => (peer.closed ? undefined : this.#onSignal(peer, frame)))
      .catch((error) => this.#warn(peer, `could not apply a ${frame.type}`, error))
      .finally(() => {
        peer.queued -= 1;
      });
  }

  /** Send a chat message to every peer with an open channel; returns how many. */
  sendChat(text) {
    let sent = 0;
    for (const peer of this.peers.values()) {
      const channel = peer.openChannel();
      if (!channel) continue;
      try {
        channel.send(text);
        sent += 1;
      } catch (error) {
        this.#warn(peer, "could not send a chat message", error);
      }
    }
    return sent;
  }

  /** How many peers a chat message would reach now. */
  get openChannels() {
    let open = 0;
    for (const peer of this.peers.values()) if (peer.openChannel()) open += 1;
    return open;
  }

  /** Hang up on everyone. */
  close() {
    for (const userId of [...this.peers.keys()]) this.removeParticipant(userId);
  }

  #createPeer(userId, username) {
    const pc = new RTCPeerConnection(this.rtcConfig);
    const peer = new Peer({ userId, username, polite: this.selfId < userId, pc });
    this.peers.set(userId, peer);
    pc.addEventListener("negotiationneeded", () => this.#offer(peer));
    pc.addEventListener("icecandidate", ({ candidate }) => this.#sendCandidate(peer, candidate));
    pc.addEventListener("track", ({ track }) => {
      peer.remoteStream.addTrack(track);
      this.#emit("track", { peer, stream: peer.remoteStream });
    });
    pc.addEventListener("datachannel", ({ channel }) => this.#adoptChannel(peer, channel));
    const changed = () => this.#emit("peer-state", { peer });
    pc.addEventListener("connectionstatechange", changed);
    pc.addEventListener("signalingstatechange", changed);
    pc.addEventListener("iceconnectionstatechange", () => {
      // A path that failed (a network change, a NAT binding lost) gets new candidates;
      // a few times only, so a peer that can never connect does not renegotiate forever.
      if (pc.iceConnectionState === "failed" && peer.iceRestarts < MAX_ICE_RESTARTS) {
        peer.iceRestarts += 1;
        pc.restartIce();
      }
      changed();
    });
    this.#emit("peer-added", { peer });
    return peer;
  }

  async #offer(peer) {
    if (peer.closed) return;
    try {
      peer.makingOffer = true;
      await peer.pc.setLocalDescription();
      this.#sendDescription(peer, peer.pc.localDescription);
      peer.offers += 1;
      this.#resendUnanswered(peer, peer.offers);
    } catch (error) {
      this.#warn(peer, "could not make an offer", error);
    } finally {
      peer.makingOffer = false;
    }
  }

  async #onSignal(peer, frame) {
    const payload = frame.payload ?? {};
    if (frame.type === "ice_candidate") {
      await this.#onCandidate(peer, payload);
    } else if (frame.type === "offer" || frame.type === "answer") {
      await this.#onDescription(peer, { type: frame.type, sdp: payload.sdp });
    }
  }

  async #onDescription(peer, description) {
    const pc = peer.pc;
    // The perfect negotiation example of the WebRTC spec, line for line.
    const readyForOffer =
      !peer.makingOffer && (pc.signalingState === "stable" || peer.settingRemoteAnswerPending);
    const offerCollision = description.type === "offer" && !readyForOffer;
    peer.ignoreOffer = !peer.polite && offerCollision;
    if (peer.ignoreOffer) return;
    peer.settingRemoteAnswerPending = description.type === "answer";
    try {
      await pc.setRemoteDescription(description); // the polite side rolls back implicitly
    } finally {
      peer.settingRemoteAnswerPending = false;
    }
    await this.#addEarlyCandidates(peer);
    if (description.type === "offer") {
      // After the offer, so our tracks take the transceivers it created (no renegotiation).
      this.#addLocalMedia(peer, { receiveWhenSilent: false });
      await pc.setLocalDescription();
      this.#sendDescription(peer, pc.localDescription);
    }
  }

  async #onCandidate(peer, payload) {
    const candidate = {
      candidate: typeof payload.candidate === "string" ? payload.candidate : "",
      sdpMid: payload.sdpMid ?? payload.sdp_mid ?? null,
      sdpMLineIndex: payload.sdpMLineIndex ?? payload.sdp_m_line_index ?? null,
    };
    if (typeof payload.usernameFragment === "string") {
      candidate.usernameFragment = payload.usernameFragment;
    }
    if (!peer.pc.remoteDescription) {
      // A browser drops a candidate it gets before the remote description: keep it.
      if (peer.earlyCandidates.length < MAX_EARLY_CANDIDATES) peer.earlyCandidates.push(candidate);
      else this.#warn(peer, "dropped an early ICE candidate: too many waiting");
      return;
    }
    await this.#addCandidate(peer, candidate);
  }

  async #addEarlyCandidates(peer) {
    const early = peer.earlyCandidates.splice(0);
    for (const candidate of early) await this.#addCandidate(peer, candidate);
  }

  async #addCandidate(peer, candidate) {
    try {
      await peer.pc.addIceCandidate(candidate);
    } catch (error) {
      // Candidates of an offer we ignored (glare) cannot apply; anything else is worth a word.
      if (!peer.ignoreOffer) this.#warn(peer, "could not add an ICE candidate", error);
    }
  }

  #sendDescription(peer, description) {
    this.send(description.type, {
      type: description.type,
      sdp: description.sdp,
      target_user_id: peer.userId,
    });
  }

  /** Offer number `offer` of this peer's, sent again while it is the one unanswered. */
  #resendUnanswered(peer, offer, resends = 0) {
    if (resends >= MAX_OFFER_RESENDS) return;
    setTimeout(() => {
      const pc = peer.pc;
      const unanswered = pc.signalingState === "have-local-offer" && peer.offers === offer;
      if (peer.closed || !unanswered) return;
      this.#warn(peer, "no answer to our offer yet: sending it again");
      this.#sendDescription(peer, pc.localDescription);
      this.#resendUnanswered(peer, offer, resends + 1);
    }, OFFER_RESEND_MS);
  }

  #sendCandidate(peer, candidate) {
    if (peer.closed) return;
    // null: gathering is complete → the protocol's end-of-candidates, `candidate: ""`.
    const payload = candidate ? candidate.toJSON() : { candidate: "" };
    this.send("ice_candidate", { ...payload, target_user_id: peer.userId });
  }

  /**
   * Our camera and microphone on this connection, once. With no local media and
   * `receiveWhenSilent`, ask to receive audio and video anyway, so a data-only joiner
   * still sees the others without a second negotiation.
   */
  #addLocalMedia(peer, { receiveWhenSilent }) {
    if (peer.localMediaAdded) return;
    peer.localMediaAdded = true;
    const stream = this.localStream;
    if (stream) {
      for (const track of stream.getTracks()) peer.pc.addTrack(track, stream);
    } else if (receiveWhenSilent) {
      peer.pc.addTransceiver("audio", { direction: "recvonly" });
      peer.pc.addTransceiver("video", { direction: "recvonly" });
    }
  }

  #adoptChannel(peer, channel) {
    if (channel.label !== CHAT_LABEL) return;
    channel.binaryType = "arraybuffer"; // a peer that sends bytes still reads as text
    peer.channels.add(channel);
    if (!peer.channel) peer.channel = channel;
    channel.addEventListener("open", () => {
      if (peer.channel?.readyState !== "open") peer.channel = channel;
      this.#emitChannels();
    });
    channel.addEventListener("message", ({ data }) => {
      const text = typeof data === "string" ? data : new TextDecoder().decode(data);
      this.#emit("chat", { from: peer.userId, text });
    });
    channel.addEventListener("close", () => {
      peer.channels.delete(channel);
      if (peer.channel === channel) peer.channel = peer.openChannel() ?? [...peer.channels][0] ?? null;
      this.#emitChannels();
    });
  }

  #emitChannels() {
    this.#emit("channels", { open: this.openChannels });
  }

  #warn(peer, message, error = null) {
    this.#emit("warning", { userId: peer.userId, message, error });
  }

  #emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}
