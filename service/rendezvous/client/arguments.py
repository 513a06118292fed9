"""The `rendezvous client` command line. Building it runs on every `rendezvous` command,
so it imports nothing of the client itself (that is loaded only when the client runs)."""

from __future__ import annotations

import argparse

from rendezvous.client.outcomes import EXIT_STATUS_HELP

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_SECONDS = 10.0
TOKEN_ENV = "RENDEZVOUS_TOKEN"

_DESCRIPTION = """\
Join ROOM, print every frame as it arrives (one line each, or the frames as received with
--json), and send what the prompt or the flags ask for. Commands, typed or piped one per line:

  ping [text]      send a ping; the server answers pong
  offer [target]   send a minimal valid SDP offer, to everyone or to one user id
  raw {json}       send the text as one frame, unchanged
  quit             leave; end of input does the same, once pending pongs are in

A refused join prints `rejected: CODE (close N): message` on stderr."""


def add_client_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `client` on the `rendezvous` subcommands."""
    client = commands.add_parser(
        "client",
        help="join a room from the terminal: check auth, room limits and delivery",
        description=_DESCRIPTION,
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    client.add_argument("room", metavar="ROOM", help="the room id ([A-Za-z0-9-]{1,64})")
    client.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"the service's base URL: http(s):// or ws(s):// (default {DEFAULT_URL})",
    )
    who = client.add_mutually_exclusive_group()
    who.add_argument("--token", metavar="T", help=f"the JWT to join with (else ${TOKEN_ENV})")
    who.add_argument(
        "--user",
        metavar="NAME",
        help="mint a 1 h token for this user id with the configured key, as `rendezvous token`",
    )
    client.add_argument(
        "--json", action="store_true", help="print each received frame as is, one per line"
    )
    client.add_argument(
        "--ping", nargs="?", type=_positive, const=1, metavar="N", help="send N pings once joined"
    )
    client.add_argument(
        "--offer",
        nargs="?",
        const="",
        metavar="TARGET",
        help="send one offer once joined, to TARGET or (without it) to everyone",
    )
    client.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="S",
        help="bound on connecting and joining, and on waiting for pongs when leaving "
        f"(default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    client.add_argument(
        "--exit-after-join",
        action="store_true",
        help="leave once joined and the flags' sends are answered; stdin is not read",
    )
    return client


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive count, got {text}")
    return value
