"""Engine configuration: one frozen record with unit-named defaults, readable from TOML and the environment.

Every limit the engine enforces lives here, so it is configurable and documented in one place
(PROTOCOL.md §3.4 lists the ones clients see). Times are seconds unless the name says ``_ms``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from protocol.codec import SERVER_LIMITS
from protocol.schema import Limits
from protocol.tokens import Keyring

__all__ = ["Config", "ConfigError"]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range (one-line message)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Everything the engine can be told. Build with keywords, ``from_toml`` or ``from_mapping``."""

    host: str = "127.0.0.1"
    port: int = 8765

    # -- identity --
    keyring: Keyring = dataclasses.field(default_factory=Keyring)
    """Public keys that user tokens may be signed with, by kid."""
    key_files: tuple[str, ...] = ()
    """Public key files (JWK) the CLI loads into ``keyring`` (TOML list, or comma-separated in ROOST_KEY_FILES)."""
    data_dir: str = ".roost"
    """Where ``roost serve`` keeps its data (and, with --dev, the development key)."""
    service_key: str | None = None
    """Credential for admin requests; ``None`` disables the admin API (fail closed)."""
    session_secret: bytes = dataclasses.field(default_factory=lambda: secrets.token_bytes(32))
    """Key of the session-token MAC. Random per process unless set (set it to keep sessions across restarts)."""
    token_leeway: float = 30.0
    wall_clock: Callable[[], float] = time.time
    """Wall-clock time in Unix seconds: token times and user-visible timestamps (tests inject their own)."""

    # -- connections --
    auth_timeout: float = 5.0
    max_pending_handshakes: int = 256
    heartbeat_default_ms: int = 10_000
    heartbeat_min_ms: int = 1_000
    heartbeat_max_ms: int = 300_000
    heartbeat_factor: float = 2.5
    close_timeout: float = 2.0
    """How long a closing connection may take to flush and answer the Close handshake."""
    max_frame_bytes: int = 64 * 1024
    max_depth: int = 16
    max_chat_chars: int = 4096
    max_meta_bytes: int = 16 * 1024
    """Largest room ``meta`` (encoded msgpack bytes); at most 32 KiB, so a lobby entry stays small."""
    max_presence_bytes: int = 16 * 1024
    """Largest presence ``data`` of one member (encoded msgpack bytes); at most 32 KiB."""
    max_chat_meta_bytes: int = 16 * 1024
    """Largest chat message ``meta`` (encoded msgpack bytes); at most 32 KiB."""
    max_state_bytes: int = 256 * 1024
    """Largest game ``state`` a client may set (encoded msgpack bytes); at most 256 KiB, so a snapshot
    (state, room meta and a page of members) always fits a server frame."""
    rate: float = 50.0
    """Sustained requests per second per connection (token bucket)."""
    burst: int = 100
    rate_close_after: float = 5.0
    """A connection that stays over its rate for this long is closed (4001)."""
    max_bad_frames: int = 10
    """Undecodable frames tolerated per minute before closing (4502)."""
    max_rooms_per_connection: int = 16
    max_sessions_per_user: int = 8
    outbox_max_frames: int = 1024
    outbox_max_bytes: int = 1024 * 1024
    max_http_body_bytes: int = 64 * 1024
    """Largest body of a plain HTTP request (the service API's JSON); larger is refused with 413."""

    # -- rooms --
    default_max_members: int = 64
    reconnect_grace: float = 60.0
    typing_timeout: float = 5.0
    room_inbox_size: int = 256
    replay_events: int = 1000
    """Events kept per room for resume; older gaps get a full resync."""
    history_limit: int = 10_000
    """Chat messages kept per room; older ones are dropped."""
    page_default: int = 50
    room_ttl: float = 3600.0
    """A room without members for this long is disposed, with every stored key (the reaper)."""
    solo_room_ttl: float = 10.0
    """The reaper's delay instead of ``room_ttl`` for a room that never had two members at once (one
    created and left alone): without it, create + leave in a loop keeps a room alive per request for
    an hour. Capped by ``room_ttl``."""
    kick_cooldown: float = 60.0
    """After a kick, how long the kicked user's ``join`` of that room is refused (``forbidden`` with
    ``retry_ms``); 0 lets it rejoin at once. Kept in memory: a server restart forgets it."""
    restart_intensity: int = 3
    restart_period: float = 5.0
    logics: Mapping[str, Callable[[], Any]] = dataclasses.field(default_factory=dict)
    """Room logic factories by name (``create`` names one with ``logic``)."""

    def __post_init__(self) -> None:
        positive = (
            "auth_timeout",
            "max_pending_handshakes",
            "heartbeat_min_ms",
            "heartbeat_factor",
            "close_timeout",
            "max_frame_bytes",
            "max_meta_bytes",
            "max_presence_bytes",
            "max_chat_meta_bytes",
            "max_state_bytes",
            "rate",
            "burst",
            "max_rooms_per_connection",
            "max_sessions_per_user",
            "outbox_max_frames",
            "outbox_max_bytes",
            "max_http_body_bytes",
            "default_max_members",
            "room_inbox_size",
            "replay_events",
            "history_limit",
            "page_default",
            "restart_period",
            "room_ttl",
            "solo_room_ttl",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if not self.heartbeat_min_ms <= self.heartbeat_default_ms <= self.heartbeat_max_ms:
            raise ConfigError("heartbeat_default_ms must lie between heartbeat_min_ms and heartbeat_max_ms")
        if self.kick_cooldown < 0:
            raise ConfigError("kick_cooldown must not be negative")
        if not 0 <= self.port <= 65535:
            raise ConfigError("port must be 0..65535")
        for name in ("max_meta_bytes", "max_presence_bytes", "max_chat_meta_bytes", "max_state_bytes"):
            cap = getattr(SERVER_LIMITS, name)  # what every client accepts from a server
            if getattr(self, name) > cap:
                raise ConfigError(f"{name} must be at most {cap}")
        if self.page_default > 100:
            raise ConfigError("page_default must be at most 100")
        if len(self.session_secret) < 16:
            raise ConfigError("session_secret must be at least 16 bytes")

    @property
    def limits(self) -> Limits:
        """The codec limits for frames clients send."""
        return Limits(max_frame_bytes=self.max_frame_bytes, max_depth=self.max_depth, max_chat_chars=self.max_chat_chars,
                      max_meta_bytes=self.max_meta_bytes, max_presence_bytes=self.max_presence_bytes,
                      max_chat_meta_bytes=self.max_chat_meta_bytes, max_state_bytes=self.max_state_bytes)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, base: Config | None = None) -> Config:
        """Apply plain values (from TOML or the environment) over ``base``, checking names and types."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for name, value in values.items():
            field = fields.get(name)
            if field is None or name in _NOT_FROM_FILES:
                raise ConfigError(f"unknown setting {name!r}")
            default = getattr(base or cls(), name)
            changes[name] = _coerce(name, value, default)
        return dataclasses.replace(base or cls(), **changes)

    @classmethod
    def from_toml(cls, path: Path, *, base: Config | None = None) -> Config:
        """Read a TOML file whose top-level keys are field names (``[roost]`` table also accepted)."""
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
        table = data.get("roost", data)
        return cls.from_mapping(table, base=base)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, base: Config | None = None) -> Config:
        """Apply ``ROOST_<FIELD>`` variables (e.g. ``ROOST_PORT=9000``)."""
        values = {
            key[len("ROOST_") :].lower(): value
            for key, value in environ.items()
            if key.startswith("ROOST_") and key[len("ROOST_") :].lower() in _ENV_FIELDS
        }
        return cls.from_mapping(values, base=base)


_NOT_FROM_FILES = frozenset({"keyring", "wall_clock", "logics", "session_secret"})
_ENV_FIELDS = frozenset(f.name for f in dataclasses.fields(Config)) - _NOT_FROM_FILES


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of the field's default; strings from the environment included."""
    kind = type(default)
    if default is None:  # optional string settings (service_key)
        return None if value in (None, "") else str(value)
    with contextlib.suppress(TypeError, ValueError):
        if kind is bool:
            if isinstance(value, str):
                return value.strip().lower() in {"1", "true", "yes", "on"}
            return bool(value)
        if kind is int and not isinstance(value, bool):
            return int(value)
        if kind is float and not isinstance(value, bool):
            return float(value)
        if kind is str:
            return str(value)
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
    raise ConfigError(f"setting {name!r} must be {_TYPE_WORDS.get(kind, kind.__name__)}, got {value!r}")


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", tuple: "a list"}


def environment() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
