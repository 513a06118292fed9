"""What `rendezvous turn-sidecar` reads from the environment (the README's TURN section
lists it). It shares WEBRTC_TURN_URLS, WEBRTC_TURN_TTL and WEBRTC_TURN_CREDENTIALS_FILE
with the service, so one ConfigMap can feed both containers of the pod."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rendezvous.settings import ConfigError, describe_validation_error, split_list

# Where Kubernetes mounts the pod's service-account namespace.
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class SidecarSettings(BaseSettings):
    """Exactly one source: WEBRTC_TURN_SECRET_DIR (a mounted Secret, the default in the
    chart) or WEBRTC_TURN_SECRET_NAME (the Kubernetes API, opt-in)."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", populate_by_name=True, frozen=True
    )

    credentials_file: Path = Field(validation_alias=_env("WEBRTC_TURN_CREDENTIALS_FILE"))
    turn_urls: str = Field(validation_alias=_env("WEBRTC_TURN_URLS"))
    secret_dir: Path | None = Field(None, validation_alias=_env("WEBRTC_TURN_SECRET_DIR"))
    secret_name: str | None = Field(None, validation_alias=_env("WEBRTC_TURN_SECRET_NAME"))
    secret_namespace: str | None = Field(
        None, validation_alias=_env("WEBRTC_TURN_SECRET_NAMESPACE")
    )
    secret_key: str = Field(
        "static-auth-secret", min_length=1, validation_alias=_env("WEBRTC_TURN_SECRET_KEY")
    )
    user: str = Field("rendezvous", min_length=1, validation_alias=_env("WEBRTC_TURN_SIDECAR_USER"))
    ttl_seconds: int = Field(86400, ge=2, le=7 * 86400, validation_alias=_env("WEBRTC_TURN_TTL"))
    rotate_fraction: float = Field(
        0.5, gt=0, lt=1, validation_alias=_env("WEBRTC_TURN_ROTATE_FRACTION")
    )
    debug: bool = Field(False, validation_alias=_env("DEBUG"))

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.secret_dir is None) == (self.secret_name is None):
            raise ValueError(
                "set exactly one of WEBRTC_TURN_SECRET_DIR (a mounted Secret) and "
                "WEBRTC_TURN_SECRET_NAME (read through the Kubernetes API)"
            )
        if not self.turn_url_list:
            raise ValueError("WEBRTC_TURN_URLS: no TURN URL given")
        if ":" in self.user:
            raise ValueError("WEBRTC_TURN_SIDECAR_USER: must not contain ':'")
        return self

    @property
    def turn_url_list(self) -> tuple[str, ...]:
        return split_list(self.turn_urls)

    @property
    def rotate_after_seconds(self) -> float:
        """How long one credential is handed out before the next replaces it."""
        return self.ttl_seconds * self.rotate_fraction


def load_sidecar_settings(**overrides: object) -> SidecarSettings:
    """Read the environment (overrides win); raise ConfigError with one readable line."""
    try:
        return SidecarSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, SidecarSettings)) from exc
