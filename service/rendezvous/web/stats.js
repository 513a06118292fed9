// Call-quality reports: every few seconds, for each connected peer, the figures of
// `pc.getStats()` go to the server as a `stats` frame (README "Call-quality stats"), which
// records them as metrics and relays them to nobody.
//
// `buildReport` is a pure function of a getStats-like Map (id → stats object), so it runs
// and is tested outside a browser; `StatsReporter` is the timer around it.
//
// What is read, from the path ICE selected (the transport's selectedCandidatePairId, else
// the succeeded nominated pair):
//   rtt_ms        the pair's currentRoundTripTime (STUN consent checks)
//   jitter_ms     the worst `inbound-rtp` stream's jitter (what we receive)
//   packet_loss   lost / (lost + received) over every `inbound-rtp` stream, since the
//                 previous report (since the start for the first)
//   bitrate_kbps  what the pair received since the previous report (absent in the first)
//   candidate_pair  the pair's most indirect end: relay, else srflx, else prflx, else host
// A figure the browser does not give, or one outside the server's bounds, is left out:
// the server would refuse the whole report for it.

export const STATS_INTERVAL_MS = 5000;
// The server's bounds (rendezvous/stats.py).
const MAX_RTT_MS = 60000;
const MAX_JITTER_MS = 60000;
const MAX_BITRATE_KBPS = 10000000;
// Most indirect first: a pair with a relayed end goes through TURN.
const CANDIDATE_RANK = ["relay", "srflx", "prflx", "host"];

/**
 * The `stats` payload for one peer connection, and the sample the next call needs.
 * @param stats an RTCStatsReport, or any Map of id → stats object
 * @param previous the `sample` this returned last time for the same connection, or null
 * @param targetUserId whom the figures are about (the peer's user_id), or null
 * @returns {{payload: object, sample: object}}
 */
export function buildReport(stats, previous = null, targetUserId = null) {
  const payload = {};
  if (targetUserId) payload.target_user_id = targetUserId;
  const pair = selectedPair(stats);
  const sample = { timestamp: null, bytesReceived: null, packetsLost: 0, packetsReceived: 0 };
  if (pair) {
    setBounded(payload, "rtt_ms", seconds(pair.currentRoundTripTime), MAX_RTT_MS);
    const type = pairType(stats, pair);
    if (type) payload.candidate_pair = type;
    if (isCount(pair.bytesReceived) && finite(pair.timestamp)) {
      sample.timestamp = pair.timestamp;
      sample.bytesReceived = pair.bytesReceived;
      if (previous?.bytesReceived != null && pair.timestamp > previous.timestamp) {
        const bytes = pair.bytesReceived - previous.bytesReceived;
        // bytes * 8 / ms = kbit/s; a counter that went back (a restart) says nothing.
        if (bytes >= 0) {
          const kbps = (bytes * 8) / (pair.timestamp - previous.timestamp);
          setBounded(payload, "bitrate_kbps", kbps, MAX_BITRATE_KBPS);
        }
      }
    }
  }
  let jitter = null;
  for (const report of stats.values()) {
    if (report.type !== "inbound-rtp") continue;
    if (finite(report.jitter)) jitter = Math.max(jitter ?? 0, report.jitter);
    if (isCount(report.packetsReceived)) sample.packetsReceived += report.packetsReceived;
    // packetsLost may go negative (duplicates count as received): never below none lost.
    if (finite(report.packetsLost)) sample.packetsLost += Math.max(report.packetsLost, 0);
  }
  setBounded(payload, "jitter_ms", seconds(jitter), MAX_JITTER_MS);
  const lost = sample.packetsLost - (previous?.packetsLost ?? 0);
  const received = sample.packetsReceived - (previous?.packetsReceived ?? 0);
  if (lost >= 0 && received >= 0 && lost + received > 0) {
    setBounded(payload, "packet_loss", lost / (lost + received), 1);
  }
  return { payload, sample };
}

function selectedPair(stats) {
  for (const report of stats.values()) {
    if (report.type === "transport" && report.selectedCandidatePairId) {
      const pair = stats.get(report.selectedCandidatePairId);
      if (pair) return pair;
    }
  }
  for (const report of stats.values()) {
    if (report.type === "candidate-pair" && report.state === "succeeded" && report.nominated) {
      return report;
    }
  }
  return null;
}

function pairType(stats, pair) {
  const ends = [stats.get(pair.localCandidateId), stats.get(pair.remoteCandidateId)];
  const types = ends.map((end) => end?.candidateType);
  return CANDIDATE_RANK.find((type) => types.includes(type)) ?? null;
}

function seconds(value) {
  return finite(value) ? value * 1000 : null;
}

function setBounded(payload, field, value, upper) {
  if (finite(value) && value >= 0 && value <= upper) payload[field] = round(value);
}

function round(value) {
  return Math.round(value * 1000) / 1000; // a short frame; microseconds say nothing here
}

function finite(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function isCount(value) {
  return finite(value) && value >= 0;
}

/**
 * Sends `buildReport` for every connected peer of `peers` (a Map of user_id → Peer, as
 * mesh.js keeps it) every `intervalMs`, through `send(type, payload)`.
 */
export class StatsReporter {
  constructor({ peers, send, intervalMs = STATS_INTERVAL_MS }) {
    this.peers = peers;
    this.send = send;
    this.intervalMs = intervalMs;
    this.timer = null;
    this.busy = false; // a slow getStats() never stacks ticks
    this.samples = new WeakMap(); // RTCPeerConnection → its last sample
  }

  start() {
    if (this.timer !== null || !(this.intervalMs > 0)) return;
    this.timer = setInterval(() => this.#tick(), this.intervalMs);
  }

  stop() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  async #tick() {
    if (this.busy) return;
    this.busy = true;
    try {
      for (const peer of [...this.peers.values()]) {
        if (this.timer === null) return; // stopped while we awaited
        if (peer.closed || peer.pc.connectionState !== "connected") continue;
        await this.#report(peer);
      }
    } finally {
      this.busy = false;
    }
  }

  async #report(peer) {
    try {
      const stats = await peer.pc.getStats();
      const { payload, sample } = buildReport(stats, this.samples.get(peer.pc) ?? null, peer.userId);
      this.samples.set(peer.pc, sample);
      if (!peer.closed) this.send("stats", payload);
    } catch (error) {
      console.warn(`rendezvous: could not read the stats of peer ${peer.userId}`, error);
    }
  }
}
