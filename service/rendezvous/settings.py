"""Process settings, read once from the environment (SEED.md's names kept exactly)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError
from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rendezvous.redis_url import RedisMode, RedisTarget, parse_redis_url

# SEED.md: with no STUN/TURN configured, fall back to Google's public STUN servers.
GOOGLE_STUN_URLS = ("stun:stun.l.google.com:19302", "stun:stun1.l.google.com:19302")
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "PS256"})
# Static TURN credentials never expire by themselves; advertise a day, as DESIGN's example.
STATIC_CREDENTIALS_TTL_SECONDS = 86400
SECRET_FIELDS = frozenset({"jwt_secret_key", "redis_password", "turn_credential", "turn_secret"})


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class ConfigError(Exception):
    """Invalid configuration; its message is one line naming the variable."""


class Settings(BaseSettings):
    """Every environment variable Rendezvous reads; see the README's configuration table."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", populate_by_name=True, frozen=True
    )

    debug: bool = Field(False, validation_alias=_env("DEBUG"))

    # Redis: REDIS_URL wins over the parts; neither set means the in-memory backend.
    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL"))
    redis_host: str | None = Field(None, validation_alias=_env("REDIS_HOST"))
    redis_port: int = Field(6379, ge=1, le=65535, validation_alias=_env("REDIS_PORT"))
    redis_password: str | None = Field(None, validation_alias=_env("REDIS_PASSWORD"))
    redis_db: int = Field(0, ge=0, validation_alias=_env("REDIS_DB"))

    # JWT (DESIGN section 4).
    jwt_secret_key: str | None = Field(None, validation_alias=_env("JWT_SECRET_KEY"))
    jwt_public_key: str | None = Field(None, validation_alias=_env("JWT_PUBLIC_KEY"))
    jwt_jwks_url: str | None = Field(None, validation_alias=_env("JWT_JWKS_URL"))
    jwt_algorithms: str | None = Field(None, validation_alias=_env("JWT_ALGORITHMS"))
    jwt_audience: str | None = Field(None, validation_alias=_env("JWT_AUDIENCE"))
    jwt_issuer: str | None = Field(None, validation_alias=_env("JWT_ISSUER"))
    jwt_leeway_seconds: float = Field(10.0, ge=0, le=300, validation_alias=_env("JWT_LEEWAY"))

    # ICE (SEED.md). None = unset (Google fallback for STUN); "" = no servers.
    stun_urls: str | None = Field(None, validation_alias=_env("WEBRTC_STUN_URLS"))
    turn_urls: str | None = Field(None, validation_alias=_env("WEBRTC_TURN_URLS"))
    turn_username: str | None = Field(None, validation_alias=_env("WEBRTC_TURN_USERNAME"))
    turn_credential: str | None = Field(None, validation_alias=_env("WEBRTC_TURN_CREDENTIAL"))
    # TURN REST: per-user time-limited credentials minted from coturn's static-auth-secret.
    turn_secret: str | None = Field(None, validation_alias=_env("WEBRTC_TURN_SECRET"))
    turn_ttl_seconds: int = Field(
        86400, ge=1, le=7 * 86400, validation_alias=_env("WEBRTC_TURN_TTL")
    )
    # The TURN sidecar's credentials file (DESIGN section 6): preferred while it is good.
    turn_credentials_file: Path | None = Field(
        None, validation_alias=_env("WEBRTC_TURN_CREDENTIALS_FILE")
    )
    ice_transport_policy: Literal["all", "relay"] = Field(
        "all", validation_alias=_env("WEBRTC_ICE_TRANSPORT_POLICY")
    )
    bundle_policy: Literal["balanced", "max-compat", "max-bundle"] = Field(
        "balanced", validation_alias=_env("WEBRTC_BUNDLE_POLICY")
    )
    rtcp_mux_policy: Literal["require", "negotiate"] = Field(
        "require", validation_alias=_env("WEBRTC_RTCP_MUX_POLICY")
    )

    # The live policy file (DESIGN section 5): its fields win over the variables above.
    policy_file: Path | None = Field(None, validation_alias=_env("WEBRTC_POLICY_FILE"))

    # Rooms and presence.
    presence_ttl_seconds: float = Field(
        30.0, gt=0, le=3600, validation_alias=_env("WEBRTC_ROOM_PRESENCE_TTL")
    )
    max_participants_per_room: int = Field(
        50, ge=1, le=10000, validation_alias=_env("WEBRTC_MAX_PARTICIPANTS_PER_ROOM")
    )

    # Connections.
    allowed_origins: str = Field("", validation_alias=_env("WEBRTC_ALLOWED_ORIGINS"))
    ws_ping_interval_seconds: float = Field(
        20.0, gt=0, validation_alias=_env("WEBRTC_WS_PING_INTERVAL")
    )
    ws_per_message_deflate: bool = Field(False, validation_alias=_env("WEBRTC_WS_COMPRESSION"))
    max_connections: int = Field(10000, ge=1, validation_alias=_env("WEBRTC_MAX_CONNECTIONS"))
    handshake_timeout_seconds: float = Field(
        10.0, gt=0, le=300, validation_alias=_env("WEBRTC_HANDSHAKE_TIMEOUT")
    )

    # Graceful drain on SIGTERM.
    drain_window_seconds: float = Field(5.0, ge=0, validation_alias=_env("WEBRTC_DRAIN_WINDOW"))
    drain_deadline_seconds: float = Field(
        25.0, gt=0, validation_alias=_env("WEBRTC_DRAIN_DEADLINE")
    )

    # Session resume: how long a dropped participant is held for its client to come back.
    resume_grace_seconds: float = Field(10.0, ge=0, validation_alias=_env("WEBRTC_RESUME_GRACE"))

    # Per-connection limits.
    max_message_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, validation_alias=_env("WEBRTC_MAX_MESSAGE_BYTES")
    )
    rate_limit_per_second: float = Field(
        100.0, gt=0, validation_alias=_env("WEBRTC_RATE_LIMIT_PER_SECOND")
    )
    rate_limit_burst: int = Field(1000, ge=1, validation_alias=_env("WEBRTC_RATE_LIMIT_BURST"))
    send_queue_max_messages: int = Field(
        256, ge=1, validation_alias=_env("WEBRTC_SEND_QUEUE_MAX_MESSAGES")
    )
    send_queue_max_bytes: int = Field(
        1024 * 1024, ge=1024, validation_alias=_env("WEBRTC_SEND_QUEUE_MAX_BYTES")
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.ws_ping_interval_seconds >= self.presence_ttl_seconds:
            # An idle client proves it is alive only by answering pings.
            raise ValueError(
                "WEBRTC_WS_PING_INTERVAL must be shorter than WEBRTC_ROOM_PRESENCE_TTL"
            )
        if self.drain_window_seconds >= self.drain_deadline_seconds:
            raise ValueError("WEBRTC_DRAIN_WINDOW must be shorter than WEBRTC_DRAIN_DEADLINE")
        for name in self.algorithms:
            if name not in HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS:
                raise ValueError(f"JWT_ALGORITHMS: unsupported algorithm {name!r}")
            if name in HMAC_ALGORITHMS and self.jwt_secret_key and not self._secret_fits(name):
                raise ValueError(
                    f"JWT_SECRET_KEY is too short for {name} (needs {int(name[2:]) // 8} bytes)"
                )
        if self.jwt_public_key and not _is_public_key(self.jwt_public_key):
            raise ValueError("JWT_PUBLIC_KEY: not a PEM-encoded RSA or EC public key")
        if self.jwt_public_key and self.jwt_jwks_url:
            raise ValueError("set JWT_PUBLIC_KEY or JWT_JWKS_URL, not both")
        if self.jwt_jwks_url and not self.jwt_jwks_url.startswith(("https://", "http://")):
            raise ValueError("JWT_JWKS_URL must be an http(s) URL")
        if self.jwt_secret_key is not None and len(self.jwt_secret_key) < 32:
            raise ValueError("JWT_SECRET_KEY must be at least 32 characters")
        if bool(self.turn_username) != bool(self.turn_credential):
            raise ValueError("set both WEBRTC_TURN_USERNAME and WEBRTC_TURN_CREDENTIAL, or neither")
        credentials = self.turn_secret or self.turn_username or self.turn_credentials_file
        if self.turn_url_list and not credentials:
            # A browser refuses a turn: URL without credentials (InvalidAccessError).
            raise ValueError(
                "WEBRTC_TURN_URLS needs WEBRTC_TURN_CREDENTIALS_FILE, WEBRTC_TURN_SECRET, or "
                "WEBRTC_TURN_USERNAME and WEBRTC_TURN_CREDENTIAL"
            )
        self.redis_target  # noqa: B018 -- parses, raising ValueError on a bad URL
        return self

    # Derived values, computed from the fields above.

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The accepted JWT algorithms: JWT_ALGORITHMS, else those the configured keys allow."""
        if self.jwt_algorithms is not None:
            return split_list(self.jwt_algorithms)
        names: list[str] = []
        if self.jwt_secret_key:
            names += [a for a in sorted(HMAC_ALGORITHMS) if self._secret_fits(a)]
        if self.jwt_public_key or self.jwt_jwks_url:
            names += ["RS256", "ES256"]
        return tuple(names)

    def _secret_fits(self, algorithm: str) -> bool:
        """RFC 7518 3.2: an HMAC key must be at least as long as the hash output."""
        secret = self.jwt_secret_key or ""
        return len(secret.encode()) * 8 >= int(algorithm[2:])

    @property
    def has_jwt_key(self) -> bool:
        return bool(self.jwt_secret_key or self.jwt_public_key or self.jwt_jwks_url)

    @property
    def redis_target(self) -> RedisTarget | None:
        """Where Redis is, or None for the in-memory backend."""
        if self.redis_url:
            try:
                return parse_redis_url(self.redis_url)
            except ValueError as exc:
                raise ValueError(f"REDIS_URL: {exc}") from exc
        if self.redis_host:
            return RedisTarget(
                mode=RedisMode.STANDALONE,
                nodes=((self.redis_host, self.redis_port),),
                password=self.redis_password or None,
                db=self.redis_db,
            )
        return None

    @property
    def stun_url_list(self) -> tuple[str, ...]:
        return GOOGLE_STUN_URLS if self.stun_urls is None else split_list(self.stun_urls)

    @property
    def turn_url_list(self) -> tuple[str, ...]:
        return () if self.turn_urls is None else split_list(self.turn_urls)

    @property
    def allowed_origin_set(self) -> frozenset[str]:
        return frozenset(o.rstrip("/") for o in split_list(self.allowed_origins))

    @property
    def ws_frame_limit_bytes(self) -> int:
        """What the WebSocket layer accepts: above the protocol limit, so a frame a little too
        large still earns a `message_too_large` error frame before the 1009 close."""
        return self.max_message_bytes * 4


def _is_public_key(pem: str) -> bool:
    """Whether PyJWT can verify with `pem`, checked at start-up rather than per token."""
    for algorithm in (RSAAlgorithm(RSAAlgorithm.SHA256), ECAlgorithm(ECAlgorithm.SHA256)):
        try:
            algorithm.prepare_key(pem)
        except (InvalidKeyError, ValueError):
            continue
        return True
    return False


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated variable's items, blanks dropped."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def load_settings(**overrides: object) -> Settings:
    """Read the environment (overrides win); raise ConfigError with one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, Settings)) from exc


def describe_validation_error(exc: ValidationError, model: type[BaseSettings]) -> str:
    """The first error as one line, naming the environment variable."""
    first = exc.errors()[0]
    message = "must be set" if first["type"] == "missing" else str(first["msg"])
    message = message.removeprefix("Value error, ")
    if not first["loc"]:
        return message
    name = str(first["loc"][0])
    field = model.model_fields.get(name)
    alias = field.validation_alias if field else None
    env = alias.choices[0] if isinstance(alias, AliasChoices) else name
    return f"{str(env).upper()}: {message}"
