// What to tell a person for each error the page can meet: every error code of the
// protocol (DESIGN.md section 3), the WebSocket close codes for a close that came without
// an error frame, and the page's own failures (network, media, input).

const ERROR_MESSAGES = {
  // Frames the server dropped; the connection stays open.
  invalid_message: "The server could not accept a message from this page (invalid message).",
  unsupported_type: "The server does not accept that kind of message from a client.",
  rate_limited: "Too many messages too fast: the server dropped some. Slow down for a moment.",
  target_not_found: "A message could not be delivered: that participant is no longer in the room.",
  // Rejected joins and closed connections.
  unauthorized: "Your token is missing, invalid or expired. Get a new token and join again.",
  forbidden_room:
    "You may not join this room: your token does not grant it, or the name is not valid " +
    "(1 to 64 letters, digits or '-').",
  forbidden: "Your token lacks the role this needs.",
  room_full: "This room is full. Try again later or pick another room.",
  message_too_large: "A message was too large for the server, which closed the connection.",
  backend_unavailable:
    "The service cannot reach its shared backend right now; a message or the join was " +
    "refused. Try again in a moment.",
  server_busy: "The server has too many connections right now. Try again in a moment.",
  session_replaced:
    "You joined this room again from another tab or device, so this one was disconnected.",
  slow_consumer: "This page could not keep up with the server's messages and was disconnected.",
  server_draining: "The server is restarting. Join again: any other instance will take you.",
  internal_error: "The server hit an internal error and closed the connection. Join again.",
  kicked: "An administrator removed you from this room.",
  room_closed: "An administrator closed this room; everyone in it was disconnected.",
  not_found: "That room or participant is not there (any more).",
  resume_failed:
    "Your previous session could not be resumed (it expired or was ended), so you joined afresh.",
  // The page's own.
  network_error: "The service could not be reached. Check the address and your network.",
  media_unavailable:
    "The camera or microphone could not be opened, so you joined without them (chat works).",
  room_required: "Enter a room name.",
  page_error: "This page hit an unexpected error; reload it and join again.",
  token_required:
    "This server is not in dev mode: paste a token (for example from `rendezvous token`).",
};

const CLOSE_MESSAGES = {
  1000: "The server ended the connection.",
  1001: "The server is going away. Join again.",
  1006:
    "The connection to the signaling server was lost, or could not be opened (the server " +
    "is unreachable, is restarting, or refused this page's origin).",
  1007: "The server received text that is not valid UTF-8 and closed the connection.",
  1008: "The server refused the connection (policy violation).",
  1009: "A message was too large for the server, which closed the connection.",
  1011: "The server hit an internal error and closed the connection. Join again.",
  1012: "The server is restarting. Join again: any other instance will take you.",
  1013: "The server is overloaded. Try again in a moment.",
  4001: "You joined this room again from another tab or device, so this one was disconnected.",
  4002: "An administrator removed you from this room.",
  4003: "An administrator closed this room; everyone in it was disconnected.",
  4004: "Your previous session could not be resumed (it expired or was ended). Join again.",
};

/** A clear sentence for an error code; `detail` (the server's message) when unknown. */
export function describeError(code, detail = "") {
  const known = ERROR_MESSAGES[code];
  if (known) return known;
  if (/^http_\d+$/.test(code)) return `The service answered HTTP ${code.slice(5)}. ${detail}`.trim();
  return detail || `Error: ${code}.`;
}

/** A clear sentence for a WebSocket close code that arrived without an error frame. */
export function describeClose(code) {
  return CLOSE_MESSAGES[code] ?? `The signaling connection closed (code ${code}).`;
}
