"""The demo page (service/rendezvous/web) as the browser tests see it: the query
parameters that drive it and its DOM contract (#status, #error, #participants, #peers
tiles with their [data-field] states, #chat-log, window.rendezvous), read from a real
Chromium page. Every wait is bounded and, when it fails, says what the page showed (status, error,
participants, peer states, chat) and where its screenshot is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from tests.browser.webrtc import frames_decoded, selected_pair
from tests.support.browser import BrowserPage, Chromium

JOIN_TIMEOUT_SECONDS = 20.0
# ICE, DTLS and the first decoded frames for several peers on a loaded 2-core machine.
CALL_TIMEOUT_SECONDS = 45.0
CHAT_TIMEOUT_SECONDS = 10.0

# The page summed up, for failure messages.
DESCRIBE = """() => {
  const text = (el) => (el ? el.textContent.trim() : null);
  const error = document.querySelector('#error');
  return {
    status: document.querySelector('#status')?.dataset.state,
    status_text: text(document.querySelector('#status')),
    error: error && !error.hidden ? { code: error.dataset.code, text: text(error) } : null,
    participants: [...document.querySelectorAll('#participants li')].map(
      (li) => `${li.dataset.userId}=${li.textContent}${li.dataset.self ? ' (self)' : ''}`),
    peers: [...document.querySelectorAll('#peers .peer')].map((tile) => ({
      user_id: tile.dataset.userId,
      connection: text(tile.querySelector('[data-field="connection-state"]')),
      ice: text(tile.querySelector('[data-field="ice-state"]')),
      signaling: text(tile.querySelector('[data-field="signaling-state"]')),
    })),
    chat: [...document.querySelectorAll('#chat-log li')].map(
      (li) => `${li.dataset.from}: ${li.textContent}`),
  };
}"""

_PARTICIPANTS = """(expected) => {
  const items = [...document.querySelectorAll('#participants li[data-user-id]')].map((li) => ({
    user_id: li.dataset.userId, name: li.textContent, self: li.dataset.self === 'true' }));
  const ids = items.map((item) => item.user_id).sort();
  return JSON.stringify(ids) === JSON.stringify([...expected].sort()) ? items : null;
}"""

_PEER_FIELD = """([userId, field]) => {
  const tile = [...document.querySelectorAll('#peers .peer')].find(
    (peer) => peer.dataset.userId === userId);
  return tile ? tile.querySelector(`[data-field="${field}"]`).textContent : null;
}"""

_CHAT_LINE = """([from, text]) => {
  const line = [...document.querySelectorAll('#chat-log li')].find(
    (li) => li.dataset.from === from && li.textContent === text);
  return line ? { from: line.dataset.from, text: line.textContent,
                  self: line.dataset.self === 'true' } : null;
}"""

_PEER_PC = "window.rendezvous.peers.get(arg).pc"

# The connection to a peer once it is negotiated and settled with `count` transceivers, each
# with a mid: stable, no offer in the making; the mids in order (null until then).
_NEGOTIATED = """([userId, count]) => {
  const peer = window.rendezvous.peers.get(userId);
  if (!peer || peer.makingOffer || peer.pc.signalingState !== 'stable') return null;
  const mids = peer.pc.getTransceivers().map((transceiver) => transceiver.mid);
  return mids.length === count && mids.every((mid) => mid !== null) ? mids : null;
}"""

# Logs, per negotiation round, what the page did with one peer's descriptions. Each entry:
# {round, kind, type, state, making_offer} with the signaling state (and mesh.js's
# makingOffer) at that moment; kinds: "send" (our offer/answer, as the page sends it),
# "receive" (theirs, as the server delivers it, before mesh.js handles it), "apply" (mesh.js
# calls setRemoteDescription with it) and "state" (a signalingstatechange). Wraps the
# SignalingClient's send and the connection's setRemoteDescription, which mesh.js looks up
# at each call, so the page itself is unchanged.
_RECORD_NEGOTIATION = """(userId) => {
  const peer = window.rendezvous.peers.get(userId);
  const signaling = window.rendezvous.signaling;
  const pc = peer.pc;
  const log = { round: 0, entries: [] };
  window.negotiationLog = log;
  const note = (kind, type = null) => log.entries.push({
    round: log.round, kind, type, state: pc.signalingState, making_offer: peer.makingOffer });
  const isDescription = (type) => type === 'offer' || type === 'answer';
  pc.addEventListener('signalingstatechange', () => note('state'));
  const setRemoteDescription = pc.setRemoteDescription.bind(pc);
  pc.setRemoteDescription = (description) => {
    note('apply', description.type);
    return setRemoteDescription(description);
  };
  const send = signaling.send.bind(signaling);
  signaling.send = (type, payload) => {
    if (isDescription(type) && payload.target_user_id === userId) note('send', type);
    return send(type, payload);
  };
  signaling.addEventListener('frame', ({ detail }) => {
    if (isDescription(detail.type) && detail.sender_id === userId) note('receive', detail.type);
  });
  return true;
}"""

# #error once it is shown with this data-code and #status has reached this data-state (the
# page shows a server's error frame first, then its close moves #status to "error").
_ERROR_SHOWN = """([code, state]) => {
  const error = document.querySelector('#error');
  const status = document.querySelector('#status');
  if (error.hidden || error.dataset.code !== code || status.dataset.state !== state) return null;
  return { code: error.dataset.code, text: error.textContent, visible: error.checkVisibility(),
           state: status.dataset.state, join_enabled: !document.querySelector('#join').disabled };
}"""

# messages.js's sentence for an error code, imported by the page's own URL (one module
# instance with the page's); null when describeError only has its fallback for the code,
# which returns the detail it is given where a known code ignores it.
_ERROR_SENTENCE = """async (code) => {
  const { describeError } = await import(new URL('messages.js', document.baseURI).href);
  const sentence = describeError(code);
  return describeError(code, 'a detail only the fallback shows') === sentence ? sentence : null;
}"""


def demo_url(
    base: str,
    *,
    room: str,
    name: str | None = None,
    token: str | None = None,
    media: bool = True,
    autojoin: bool = True,
) -> str:
    """`base`/demo/ with the query parameters that prefill and drive the page."""
    query: dict[str, str] = {"room": room}
    if name is not None:
        query["name"] = name
    if token is not None:
        query["token"] = token
    if not media:
        query["media"] = "0"
    if autojoin:
        query["autojoin"] = "1"
    return f"{base}/demo/?{urlencode(query)}"


@dataclass
class DemoPage:
    """One participant's demo page; `user_id` is known once it has joined."""

    browser: Chromium
    page: BrowserPage
    user_id: str | None = None

    @classmethod
    async def open(cls, browser: Chromium, name: str, url: str) -> DemoPage:
        return cls(browser, await browser.open(name, url))

    async def poll(self, expression: str, arg: Any = None, *, what: str, timeout: float) -> Any:
        return await self.browser.poll(
            self.page, expression, arg, what=what, timeout=timeout, describe=DESCRIBE
        )

    async def evaluate(self, expression: str, arg: Any = None) -> Any:
        return await self.page.evaluate(expression, arg)

    async def wait_joined(self) -> str:
        """Wait for #status[data-state=joined]; the user id window.rendezvous names."""
        self.user_id = await self.poll(
            "() => document.querySelector('#status').dataset.state === 'joined'"
            " && window.rendezvous.userId",
            what="#status data-state=joined",
            timeout=JOIN_TIMEOUT_SECONDS,
        )
        assert isinstance(self.user_id, str)
        return self.user_id

    async def wait_participants(self, expected: dict[str, str]) -> None:
        """#participants lists exactly `expected` (user_id -> name), self marked."""
        items = await self.poll(
            _PARTICIPANTS,
            sorted(expected),
            what=f"#participants listing {sorted(expected)}",
            timeout=JOIN_TIMEOUT_SECONDS,
        )
        shown = {item["user_id"]: item["name"] for item in items}
        assert shown == expected, items
        selves = [item["user_id"] for item in items if item["self"]]
        assert selves == [self.user_id], items

    async def wait_error(self, code: str, *, state: str = "error") -> dict[str, Any]:
        """Wait for #error shown with data-code=code while #status is at data-state=state;
        what the page shows then: code, text, visible, state, join_enabled."""
        shown: dict[str, Any] = await self.poll(
            _ERROR_SHOWN,
            [code, state],
            what=f"#error[data-code={code}] with #status data-state={state}",
            timeout=JOIN_TIMEOUT_SECONDS,
        )
        return shown

    async def error_sentence(self, code: str) -> str:
        """The sentence messages.js gives `code` (fails if it has none, only a fallback)."""
        sentence: str | None = await self.evaluate(_ERROR_SENTENCE, code)
        assert sentence, f"messages.js has no sentence for {code!r}"
        return sentence

    async def assert_error_explained(self, code: str) -> dict[str, Any]:
        """#error shows `code`, visibly, with messages.js's own sentence for it, and #status
        says data-state=error; what `wait_error` read."""
        shown = await self.wait_error(code)
        assert shown["visible"], shown
        assert shown["text"] == await self.error_sentence(code), shown
        return shown

    async def status(self) -> dict[str, Any]:
        """#status's data-state and #error (null when hidden), read now."""
        described: dict[str, Any] = await self.evaluate(DESCRIBE)
        return {"state": described["status"], "error": described["error"]}

    async def peer_field(self, user_id: str, field: str) -> str | None:
        """The text of the peer tile's [data-field=field], or None without a tile."""
        value: str | None = await self.evaluate(_PEER_FIELD, [user_id, field])
        return value

    async def wait_peer_state(self, user_id: str, field: str, state: str) -> None:
        await self.poll(
            f"(arg) => ({_PEER_FIELD})(arg) === {state!r}",
            [user_id, field],
            what=f".peer[data-user-id={user_id}] [data-field={field}] = {state}",
            timeout=CALL_TIMEOUT_SECONDS,
        )

    async def wait_connected(self, user_id: str) -> None:
        """The peer tile shows the connection connected, ICE connected (or completed) and
        signaling stable."""
        await self.wait_peer_state(user_id, "connection-state", "connected")
        assert await self.peer_field(user_id, "ice-state") in ("connected", "completed")
        assert await self.peer_field(user_id, "signaling-state") == "stable"

    async def wait_video_from(self, user_id: str, *, more_than: int = 0) -> int:
        """Video frames decoded from `user_id` (inbound-rtp framesDecoded), once more than
        `more_than` (a count read earlier: the video still decodes)."""
        above = (
            f"async ([arg, floor]) => {{ const frames = await ({frames_decoded(_PEER_PC)})(arg);"
            " return frames > floor ? frames : null; }"
        )
        frames: int = await self.poll(
            above,
            [user_id, more_than],
            what=f"more than {more_than} video frames decoded from {user_id}",
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return frames

    async def wait_negotiated(self, user_id: str, *, transceivers: int) -> list[str]:
        """Wait until the connection to `user_id` is stable, with no offer in the making,
        and has `transceivers` transceivers, each with a mid; the mids, in order."""
        mids: list[str] = await self.poll(
            _NEGOTIATED,
            [user_id, transceivers],
            what=f"stable connection to {user_id} with {transceivers} transceivers with mids",
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return mids

    async def record_negotiation(self, user_id: str) -> None:
        """From now on, log what happens to the descriptions exchanged with `user_id`
        (`_RECORD_NEGOTIATION`), under round 0 until `start_round`."""
        assert await self.evaluate(_RECORD_NEGOTIATION, user_id)

    async def start_round(self, number: int) -> None:
        """Log what follows under round `number`."""
        await self.evaluate("(number) => { window.negotiationLog.round = number; }", number)

    async def negotiation_log(self) -> list[dict[str, Any]]:
        """The entries `record_negotiation` logged so far, oldest first."""
        entries: list[dict[str, Any]] = await self.evaluate("() => window.negotiationLog.entries")
        return entries

    async def selected_pair(self, user_id: str) -> dict[str, Any]:
        """The selected candidate pair of the connection to `user_id` (once there is one)."""
        pair: dict[str, Any] = await self.poll(
            selected_pair(_PEER_PC),
            user_id,
            what=f"a selected candidate pair with {user_id}",
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return pair

    async def send_chat(self, text: str) -> None:
        """Type `text` into #chat-input and press #chat-send (enabled once a channel is
        open); the page's own line appears in #chat-log marked data-self."""
        await self.poll(
            "() => !document.querySelector('#chat-send').disabled",
            what="#chat-send enabled (a chat channel open)",
            timeout=CALL_TIMEOUT_SECONDS,
        )
        await self.page.page.fill("#chat-input", text)
        await self.page.page.click("#chat-send")
        line = await self.wait_chat(text, sender=self.user_id or "")
        assert line["self"], line

    async def wait_chat(self, text: str, *, sender: str) -> dict[str, Any]:
        """The #chat-log line with data-from=sender and this text."""
        line: dict[str, Any] = await self.poll(
            _CHAT_LINE,
            [sender, text],
            what=f"#chat-log line {text!r} from {sender}",
            timeout=CHAT_TIMEOUT_SECONDS,
        )
        return line
