"""What a test reads from a page's RTCPeerConnection through `getStats()`: video frames
decoded, and the candidate pair ICE selected. Each constant is a JS function of one
argument, the expression that finds the connection being given as `pc_expression`."""

from __future__ import annotations

from pathlib import Path

JS_DIR = Path(__file__).parent / "js"

# The video frames decoded from everything this connection receives (0 before any).
_FRAMES_DECODED = """
  const stats = await pc.getStats();
  let frames = 0;
  stats.forEach((report) => {
    if (report.type === 'inbound-rtp' && report.kind === 'video') {
      frames += report.framesDecoded || 0;
    }
  });
  return frames;
"""

# The selected pair: the transport's selectedCandidatePairId, else the succeeded
# nominated pair; its two ends' candidate types and addresses (null before ICE has one).
_SELECTED_PAIR = """
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((report) => {
    if (report.type === 'transport' && report.selectedCandidatePairId) {
      pair = stats.get(report.selectedCandidatePairId);
    }
  });
  if (!pair) {
    stats.forEach((report) => {
      if (report.type === 'candidate-pair' && report.state === 'succeeded' && report.nominated) {
        pair = report;
      }
    });
  }
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return {
    local: local.candidateType,
    remote: remote.candidateType,
    local_address: `${local.address}:${local.port}`,
    remote_address: `${remote.address}:${remote.port}`,
    state: pair.state,
  };
"""


def frames_decoded(pc_expression: str) -> str:
    """JS `async (arg) => frames`: video frames decoded by `pc_expression` (may use arg);
    null while there is no such connection yet."""
    return _with_connection(pc_expression, _FRAMES_DECODED)


def selected_pair(pc_expression: str) -> str:
    """JS `async (arg) => {local, remote, ...} | null` for `pc_expression`'s selected pair."""
    return _with_connection(pc_expression, _SELECTED_PAIR)


def _with_connection(pc_expression: str, body: str) -> str:
    # A connection not made yet (a peer not known yet) reads as null, so polls go on.
    find = f"(() => {{ try {{ return {pc_expression}; }} catch {{ return null; }} }})()"
    return f"async (arg) => {{ const pc = {find}; if (!pc) return null; {body} }}"


def script(name: str) -> str:
    """A JS file of tests/browser/js."""
    return (JS_DIR / name).read_text()
