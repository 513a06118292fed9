"""The policy file as written (`WEBRTC_POLICY_FILE`, YAML): what an operator may change
while the service runs. Every field is optional; one left out keeps the value the
environment gives (the SEED.md variables), so a file states only what it overrides.
The JSON Schema of this model is committed as `policy.schema.json` (`rendezvous
policy-schema`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ROOM_PATTERN = re.compile(r"^(?:[A-Za-z0-9-]{1,64}\*?|\*)$")
STUN_URL = re.compile(r"^stuns?:\S+$")
TURN_URL = re.compile(r"^turns?:\S+$")  # a stun: URL here would be handed out with credentials
ORIGIN = re.compile(r"^https?://[^/\s]+/?$")

StunUrl = Annotated[str, Field(pattern=STUN_URL.pattern, examples=["stun:stun.example.org:3478"])]
TurnUrl = Annotated[
    str, Field(pattern=TURN_URL.pattern, examples=["turn:turn.example.org:3478?transport=udp"])
]
Origin = Annotated[str, Field(pattern=ORIGIN.pattern, examples=["https://app.example.org"])]


class PolicyError(Exception):
    """A policy version that cannot apply; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class _Strict(BaseModel):
    # strict: `true` is not a number and "2048" not an integer (YAML says what it means).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class IcePolicy(_Strict):
    """What `/webrtc/config` hands out. TURN credentials never belong here (a policy is
    a ConfigMap): they come from the sidecar, WEBRTC_TURN_SECRET or the static pair."""

    stun_urls: list[StunUrl] | None = Field(
        default=None, description="STUN URLs; [] for none. Replaces WEBRTC_STUN_URLS."
    )
    turn_urls: list[TurnUrl] | None = Field(
        default=None,
        description="TURN URLs; [] for none. Replaces WEBRTC_TURN_URLS and the sidecar "
        "file's urls; needs a TURN credential source.",
    )
    ice_transport_policy: Literal["all", "relay"] | None = Field(
        default=None, description="`relay` forces TURN. Replaces WEBRTC_ICE_TRANSPORT_POLICY."
    )
    bundle_policy: Literal["balanced", "max-compat", "max-bundle"] | None = Field(
        default=None, description="Replaces WEBRTC_BUNDLE_POLICY."
    )
    rtcp_mux_policy: Literal["require", "negotiate"] | None = Field(
        default=None, description="Replaces WEBRTC_RTCP_MUX_POLICY."
    )


class RoomOverride(_Strict):
    match: str = Field(
        description="A room id, or a prefix ending in `*` (`1on1-*`); `*` alone matches all.",
        examples=["1on1-*"],
        # In the schema for other validators; checked below, with a plainer message.
        json_schema_extra={"pattern": ROOM_PATTERN.pattern},
    )
    max_participants: int = Field(ge=1, le=10000, description="Capacity of matching rooms.")

    @field_validator("match")
    @classmethod
    def _pattern(cls, value: str) -> str:
        if not ROOM_PATTERN.match(value):
            raise ValueError("a room id (A-Z, a-z, 0-9, -; up to 64) with an optional final *")
        return value


class RoomPolicy(_Strict):
    max_participants: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="Capacity of rooms no override matches. Replaces "
        "WEBRTC_MAX_PARTICIPANTS_PER_ROOM.",
    )
    overrides: list[RoomOverride] = Field(
        default_factory=list,
        description="Per-room capacities; the first entry whose `match` fits wins.",
    )


class LimitsPolicy(_Strict):
    max_message_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Largest client frame in bytes; may lower WEBRTC_MAX_MESSAGE_BYTES, "
        "never raise it.",
    )
    rate_limit_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Tokens per second per connection. Replaces WEBRTC_RATE_LIMIT_PER_SECOND.",
    )
    rate_limit_burst: int | None = Field(
        default=None,
        ge=1,
        description="Bucket size per connection. Replaces WEBRTC_RATE_LIMIT_BURST.",
    )
    send_queue_max_messages: int | None = Field(
        default=None,
        ge=1,
        description="Frames queued for one client before `slow_consumer`. Replaces "
        "WEBRTC_SEND_QUEUE_MAX_MESSAGES.",
    )
    send_queue_max_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Characters queued for one client before `slow_consumer`. Replaces "
        "WEBRTC_SEND_QUEUE_MAX_BYTES.",
    )


class Policy(_Strict):
    """The whole file. Unknown fields are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="Rendezvous policy")

    ice: IcePolicy = IcePolicy()
    rooms: RoomPolicy = RoomPolicy()
    limits: LimitsPolicy = LimitsPolicy()
    allowed_origins: list[Origin] | None = Field(
        default=None,
        description="Origins allowed to open a WebSocket; [] allows any. Replaces "
        "WEBRTC_ALLOWED_ORIGINS.",
    )


EMPTY_POLICY = Policy.model_validate({})


def parse_policy(text: bytes) -> Policy:
    """A policy from the file's bytes; PolicyError listing every problem otherwise."""
    try:
        data: Any = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        where = str(exc).replace(' in "<byte string>"', "")
        raise PolicyError([f"not YAML: {' '.join(where.split())}"]) from None
    if data is None:
        data = {}  # an empty file states nothing: the environment's values apply
    if not isinstance(data, dict):
        raise PolicyError([f"expected a mapping at the top, got {type(data).__name__}"])
    _drop_empty_sections(data)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError([_error_line(error) for error in exc.errors()]) from None


def _drop_empty_sections(data: dict[str, Any]) -> None:
    """`ice:` with every line under it commented out is YAML null: it states nothing,
    as an empty file does, rather than being an error."""
    for section in ("ice", "rooms", "limits"):
        if section in data and data[section] is None:
            del data[section]
    rooms = data.get("rooms")
    if isinstance(rooms, dict) and "overrides" in rooms and rooms["overrides"] is None:
        del rooms["overrides"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice is an error rather than the last one winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _error_line(error: Any) -> str:
    where = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
    ).lstrip(".")
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where or 'policy'}: {message}"
