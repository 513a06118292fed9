"""`rendezvous serve | token | turn-sidecar | check-config | policy-schema | client`."""

from __future__ import annotations

import argparse
import json
import logging.config
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from rendezvous.auth import mint_token
from rendezvous.backends import create_backend
from rendezvous.client.arguments import add_client_parser
from rendezvous.policy.document import Policy, PolicyError
from rendezvous.policy.effective import EffectivePolicy, resolve
from rendezvous.policy.reconciling import initial_policy, load_policy
from rendezvous.policy.view import policy_view
from rendezvous.settings import SECRET_FIELDS, ConfigError, Settings, load_settings
from rendezvous.telemetry.tracing import read_tracing_config

DEV_SECRET_BYTES = 48
DEV_TOKEN_TTL_SECONDS = 24 * 3600
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.command(args)
    except ConfigError as exc:
        print(f"rendezvous: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        # uvicorn re-raises a captured SIGINT once it has shut down cleanly; no traceback.
        return EXIT_INTERRUPTED
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rendezvous", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the signaling service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--dev",
        action="store_true",
        help="with no JWT key configured, use a local dev key and print a ready token",
    )
    serve.set_defaults(command=_serve)

    token = commands.add_parser("token", help="mint a JWT with the configured key")
    token.add_argument("--user", required=True, help="the token's sub (user id)")
    token.add_argument("--name", help="display name (the username claim)")
    token.add_argument(
        "--room", action="append", help="grant only this room (repeatable; prefix-* allowed)"
    )
    token.add_argument("--role", action="append", help="role claim, e.g. admin (repeatable)")
    token.add_argument("--ttl", default="1h", help="lifetime: 3600, 90s, 30m, 1h, 2d")
    token.add_argument("--algorithm", default="HS256")
    token.add_argument("--private-key", type=Path, help="PEM file for RS*/ES*/PS* algorithms")
    token.set_defaults(command=_token)

    sidecar = commands.add_parser(
        "turn-sidecar", help="keep the pod's TURN credential fresh from coturn's shared secret"
    )
    sidecar.add_argument("--host", default="127.0.0.1", help="where the probes listen")
    sidecar.add_argument("--port", type=int, default=8081)
    sidecar.set_defaults(command=_turn_sidecar)

    check = commands.add_parser("check-config", help="print the effective configuration")
    check.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="only check this policy file against the environment; print the policy it makes",
    )
    check.set_defaults(command=_check_config)

    schema = commands.add_parser("policy-schema", help="print the policy file's JSON Schema")
    schema.add_argument("--output", type=Path, metavar="FILE", help="write it to FILE instead")
    schema.set_defaults(command=_policy_schema)

    add_client_parser(commands).set_defaults(command=_client)
    return parser


# serve


def _serve(args: argparse.Namespace) -> int:
    from rendezvous.app import create_app  # imported late: `token` stays fast
    from rendezvous.serving import DrainingServer, uvicorn_config
    from rendezvous.telemetry.logging import logging_config

    settings = load_settings()
    dev_token = None
    if not settings.has_jwt_key:
        if not args.dev:
            raise ConfigError(
                "no JWT key: set JWT_SECRET_KEY, JWT_PUBLIC_KEY or JWT_JWKS_URL "
                "(or run `rendezvous serve --dev` on a workstation)"
            )
        settings = load_settings(jwt_secret_key=dev_secret(create=True))
        dev_token = mint_token(
            key=settings.jwt_secret_key or "", user_id="dev-user", ttl_seconds=DEV_TOKEN_TTL_SECONDS
        )
    app = create_app(settings, dev_mode=dev_token is not None)
    instance_id = app.state.services.backend.instance_id
    log_config = logging_config(debug=settings.debug, instance_id=instance_id)
    logging.config.dictConfig(log_config)
    if dev_token is not None:
        _announce_dev_mode(args.host, args.port, dev_token)
    elif args.dev:
        _warn_dev_mode_off()
    config = uvicorn_config(app, settings, host=args.host, port=args.port, log_config=log_config)
    server = DrainingServer(
        config,
        drainer=app.state.services.drainer,
        deadline_seconds=settings.drain_deadline_seconds,
    )
    server.run()
    return 0


def _announce_dev_mode(host: str, port: int, token: str) -> None:
    logging.getLogger("rendezvous").warning(
        "DEV MODE: tokens are signed with a local development key (%s), and anyone who can "
        "reach this server gets one from POST /webrtc/dev/token; not for production",
        dev_secret_path(),
    )
    base = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(
        f"\nRendezvous dev mode on http://{base}\n"
        f"  demo page:        http://{base}/demo/\n"
        f"  dev token (24 h): {token}\n"
        f"  WebSocket URL:    ws://{base}/webrtc/ws/demo?token={token}\n"
        f"  ICE config:       curl -H 'Authorization: Bearer {token}' http://{base}/webrtc/config\n"
        f"  more tokens:      rendezvous token --user alice --room demo --ttl 1h\n",
        flush=True,
    )


def _warn_dev_mode_off() -> None:
    # A configured key always wins: minting tokens for anyone who asks must never come
    # from a flag left in a deployment's command line.
    logging.getLogger("rendezvous").warning(
        "--dev IGNORED: a JWT key is configured (JWT_SECRET_KEY, JWT_PUBLIC_KEY or "
        "JWT_JWKS_URL), so dev mode is OFF: no dev token, /webrtc/dev answers 404, and the "
        "demo page asks for a token"
    )


def dev_secret_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "rendezvous" / "dev-jwt-secret"


def dev_secret(*, create: bool) -> str:
    """The dev-mode HS256 key: created once, 0600, shared by `serve --dev` and `token`."""
    path = dev_secret_path()
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first; read theirs
        else:
            with os.fdopen(fd, "w") as out:
                out.write(os.urandom(DEV_SECRET_BYTES).hex())
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            "no JWT key: set JWT_SECRET_KEY (or start `rendezvous serve --dev` once)"
        ) from None


# turn-sidecar


def _turn_sidecar(args: argparse.Namespace) -> int:
    import uvicorn

    from rendezvous.telemetry.logging import logging_config
    from rendezvous.turn.sidecar import check_output_directory, create_sidecar_app, secret_source
    from rendezvous.turn.sidecar_settings import load_sidecar_settings

    settings = load_sidecar_settings()
    check_output_directory(settings)
    source = secret_source(settings)
    log_config = logging_config(debug=settings.debug, instance_id=socket.gethostname())
    logging.config.dictConfig(log_config)
    app = create_sidecar_app(settings, source=source)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_config=log_config, access_log=False
    )
    uvicorn.Server(config).run()
    return 0


# token


def _token(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.private_key is not None:
        key = args.private_key.read_text()
    elif args.algorithm.startswith("HS"):
        key = settings.jwt_secret_key or dev_secret(create=False)
    else:
        raise ConfigError(f"--algorithm {args.algorithm} needs --private-key FILE")
    print(
        mint_token(
            key=key,
            user_id=args.user,
            ttl_seconds=parse_duration(args.ttl),
            algorithm=args.algorithm,
            username=args.name,
            rooms=args.room,
            roles=args.role,
        )
    )
    return 0


def parse_duration(text: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"--ttl: expected a duration such as 3600, 30m, 1h or 2d (got {text!r})")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


# check-config


def _check_config(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.policy is not None:
        return _check_policy(args.policy, settings)
    create_backend(settings)  # refuses what this build cannot run
    tracing = read_tracing_config()  # a bad OTEL_* value: ConfigError, one line
    live = initial_policy(settings)  # a bad WEBRTC_POLICY_FILE: ConfigError, one line
    shown = effective_config(settings, live.effective)
    if settings.policy_file is not None:
        shown["policy"] = {"sha256": live.status.sha256, "policy": policy_view(live.effective)}
    shown["effective"]["tracing"] = list(tracing.exporters) or "off"
    print(json.dumps(shown, indent=2, default=str))
    return 0


def _check_policy(path: Path, settings: Settings) -> int:
    """What `path` would put in force over this environment, as a pod would judge it:
    every problem on its own line, for a GitOps pipeline's log."""
    try:
        effective, sha256 = load_policy(path, settings)
    except PolicyError as exc:
        for error in exc.errors:
            print(f"rendezvous: policy {path}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps({"sha256": sha256, "policy": policy_view(effective)}, indent=2))
    return 0


def effective_config(settings: Settings, policy: EffectivePolicy | None = None) -> dict[str, Any]:
    """Every setting by its environment name, secrets masked, plus what they resolve to
    (with `policy`, the policy file's values where it states them)."""
    policy = policy or resolve(settings)
    shown: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = alias.choices[0] if alias is not None and hasattr(alias, "choices") else name
        value = getattr(settings, name)
        if name in SECRET_FIELDS and value:
            value = "***"
        elif name == "jwt_public_key" and value:
            value = f"(PEM, {len(value)} characters)"
        shown[str(env)] = value
    target = settings.redis_target
    if settings.redis_url:
        shown["REDIS_URL"] = target.masked() if target else None
    shown["effective"] = {
        "backend": f"redis ({target.mode.value})" if target else "memory",
        "jwt_algorithms": list(settings.algorithms),
        "stun_urls": list(policy.ice.stun_urls),
        "turn_urls": list(policy.ice.turn_urls),
        "turn_credentials": _turn_credential_sources(settings),
        "allowed_origins": sorted(policy.allowed_origins) or "any",
    }
    return shown


def _turn_credential_sources(settings: Settings) -> list[str]:
    """DESIGN section 6's sources that are configured, most preferred first."""
    sources = []
    if settings.turn_credentials_file is not None:
        sources.append(f"sidecar file {settings.turn_credentials_file}")
    if settings.turn_secret:
        sources.append("minted from WEBRTC_TURN_SECRET")
    elif settings.turn_username:
        sources.append("static WEBRTC_TURN_USERNAME/WEBRTC_TURN_CREDENTIAL")
    return sources


# client


def _client(args: argparse.Namespace) -> int:
    from rendezvous.client.running import run  # imported late: `token` stays fast

    return run(args)


# policy-schema


def _policy_schema(args: argparse.Namespace) -> int:
    text = policy_schema_text()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


def policy_schema_text() -> str:
    """The policy file's JSON Schema as committed in `schemas/policy.schema.json`."""
    return json.dumps(Policy.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.exit(main())
