"""Exit statuses of `rendezvous client`: one per way a join can be refused, so a script
can tell a bad token from a full room from an instance that is going away."""

from __future__ import annotations

from rendezvous.protocol import CloseCode, ErrorCode

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2  # argparse's own status for a bad command line
EXIT_UNAUTHORIZED = 3
EXIT_FORBIDDEN_ROOM = 4
EXIT_ROOM_FULL = 5
EXIT_TRY_AGAIN = 6
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C

HTTP_SERVICE_UNAVAILABLE = 503  # a draining instance answers the handshake with it

_BY_ERROR_CODE = {
    ErrorCode.UNAUTHORIZED.value: EXIT_UNAUTHORIZED,
    ErrorCode.FORBIDDEN_ROOM.value: EXIT_FORBIDDEN_ROOM,
    ErrorCode.ROOM_FULL.value: EXIT_ROOM_FULL,
    ErrorCode.SERVER_BUSY.value: EXIT_TRY_AGAIN,
    ErrorCode.BACKEND_UNAVAILABLE.value: EXIT_TRY_AGAIN,
    ErrorCode.SERVER_DRAINING.value: EXIT_TRY_AGAIN,
}
# A close with no error frame before it still says "come back later".
_BY_CLOSE_CODE: dict[int, int] = {
    CloseCode.SERVICE_RESTART: EXIT_TRY_AGAIN,
    CloseCode.TRY_AGAIN_LATER: EXIT_TRY_AGAIN,
}

EXIT_STATUS_HELP = f"""exit status:
  {EXIT_OK}    clean exit (quit, end of input, or --exit-after-join once joined)
  {EXIT_OTHER}    any other failure: connection refused, DNS, timeout, other error codes
  {EXIT_USAGE}    usage or configuration error: bad room id, no token, no key for --user
  {EXIT_UNAUTHORIZED}    unauthorized (missing, invalid or expired token)
  {EXIT_FORBIDDEN_ROOM}    forbidden_room (the token does not grant this room)
  {EXIT_ROOM_FULL}    room_full
  {EXIT_TRY_AGAIN}    server_busy, backend_unavailable, server_draining, or HTTP 503 at the
       handshake: try again (another instance)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"""


def exit_status(error_code: str | None, close_code: int | None = None) -> int:
    """The status for a refusal: by the server's error code, else by its close code."""
    if error_code is not None and error_code in _BY_ERROR_CODE:
        return _BY_ERROR_CODE[error_code]
    if error_code is None and close_code is not None:
        return _BY_CLOSE_CODE.get(close_code, EXIT_OTHER)
    return EXIT_OTHER
