"""Engine configuration: one frozen record with unit-named defaults, readable from TOML and the environment.

Every limit the engine enforces lives here, so it is configurable and documented in one place
(PROTOCOL.md §3.4 lists the ones clients see). Times are seconds unless the name says ``_ms``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import secrets
import time
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from roost.protocol.codec import SERVER_LIMITS
from roost.protocol.schema import Limits
from roost.protocol.tokens import Keyring

__all__ = ["CLIENT_VARIABLES", "SETTINGS", "Config", "ConfigError", "env_name"]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range (one-line message)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Everything the engine can be told. Build with keywords, ``from_toml`` or ``from_mapping``."""

    host: str = "127.0.0.1"
    """Address to bind (``0.0.0.0`` or ``::`` to accept connections from other hosts)."""
    port: int = 8765
    """TCP port to bind; 0 picks a free one (``roost serve`` prints the URL)."""

    # -- identity --
    keyring: Keyring = dataclasses.field(default_factory=Keyring)
    """Public keys that user tokens may be signed with, by kid."""
    key_files: tuple[str, ...] = ()
    """Public key files (JWK) ``roost serve`` loads into ``keyring`` (``--key`` adds more)."""
    data_dir: str = ".roost"
    """Where ``roost serve`` keeps its store (``db/``), ``session.key`` and, with ``--dev``, the development key."""
    service_key: str | None = None
    """The admin credential: the ``key`` of ``admin`` requests (PROTOCOL.md §10); unset disables the admin API."""
    session_secret: bytes = dataclasses.field(default_factory=lambda: secrets.token_bytes(32))
    """Key of the session-token MAC. Random per process unless set (set it to keep sessions across restarts)."""
    token_leeway: float = 30.0
    """Clock skew tolerated when checking a token's ``iat`` and ``exp``, in seconds."""
    wall_clock: Callable[[], float] = time.time
    """Wall-clock time in Unix seconds: token times and user-visible timestamps (tests inject their own)."""
    guests: bool = False
    """Guest play: a client without a backend token signs in with a device key proof (PROTOCOL.md §9.3); on with ``--dev``."""
    guest_audience: str | None = None
    """The ``aud`` a guest proof must carry; unset: the ``Host`` header of the connection's upgrade request."""
    guest_ttl: float = 86_400.0
    """How long a guest's connection lasts (its ``welcome.exp``); it then reconnects with a fresh proof."""
    guest_rate: float = 10.0
    """New guest users one address may create per minute (sustained; a known device key is not a creation)."""
    guest_burst: int = 5
    """New guest users one address may create at once above ``guest_rate``."""
    guest_proofs: int = 100_000
    """Unexpired guest proofs remembered (single use); when full, guest sign-ins wait (1013) rather than forget one."""

    # -- connections --
    auth_timeout: float = 5.0
    """Time a new connection has to finish the WebSocket handshake and ``hello``."""
    max_pending_handshakes: int = 256
    """WebSocket upgrades in progress at once; more are refused with HTTP 503."""
    heartbeat_default_ms: int = 10_000
    """Heartbeat interval (``welcome.hb``) when ``hello`` asks for none."""
    heartbeat_min_ms: int = 1_000
    """Shortest heartbeat interval a client may ask for."""
    heartbeat_max_ms: int = 300_000
    """Longest heartbeat interval a client may ask for."""
    heartbeat_factor: float = 2.5
    """A connection not heard from for this many heartbeat intervals is closed."""
    close_timeout: float = 2.0
    """How long a closing connection may take to flush and answer the Close handshake."""
    max_frame_bytes: int = 64 * 1024
    """Largest frame, either direction, in bytes."""
    max_depth: int = 16
    """Deepest nesting of maps and arrays a client frame may have."""
    max_chat_chars: int = 4096
    """Longest chat text, in characters."""
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
    """Requests a connection may send at once above its sustained ``rate``."""
    rate_close_after: float = 5.0
    """A connection that stays over its rate for this long is closed (4001)."""
    max_bad_frames: int = 10
    """Undecodable frames tolerated per minute before closing (4502)."""
    max_rooms_per_connection: int = 16
    """Rooms one connection may be a member of at once."""
    max_sessions_per_user: int = 8
    """Live sessions (devices, tabs) one user may have at once."""
    outbox_max_frames: int = 1024
    """Frames (its final Close included) one connection may have that the kernel has not taken; one more closes it as a slow consumer (4000)."""
    outbox_max_bytes: int = 1024 * 1024
    """Bytes one connection may have that the kernel has not taken (room for its Close is kept); more close it as a slow consumer (4000)."""
    max_http_body_bytes: int = 64 * 1024
    """Largest body of a plain HTTP request (the service API's JSON); larger is refused with 413."""

    # -- rooms --
    default_max_members: int = 64
    """Room size when ``create`` gives no ``max``."""
    reconnect_grace: float = 60.0
    """How long a dropped session keeps its memberships (shown ``offline``) for a resume."""
    typing_timeout: float = 5.0
    """A typing indicator not renewed for this long is cleared."""
    receipt_window: float = 0.25
    """Delivered cursors and ``receipts`` to authors are batched per room over this window (one commit, one frame per author)."""
    commit_linger: float = 0.001
    """Under load (the last commit carried several rooms' turns), a store commit starts no sooner than this after the last one began, gathering every room turn made meanwhile: fewer fsyncs per message. At low rates nothing waits. 0: commit at once."""
    room_inbox_size: int = 256
    """Commands queued for one room actor before senders wait."""
    replay_events: int = 1000
    """Events kept per room for resume; older gaps get a full resync."""
    history_limit: int = 10_000
    """Chat messages kept per room; older ones are dropped."""
    page_default: int = 50
    """Items in a page (lobby, members, history) when the request gives no ``limit`` (at most 100)."""
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
    """Crashes of one room actor tolerated within ``restart_period`` (each restarts it); one more closes the room."""
    restart_period: float = 5.0
    """Window, in seconds, for ``restart_intensity``."""

    # -- inboxes (PROTOCOL.md §16) --
    inbox_max_entries: int = 200
    """Entries kept per user inbox; past it the oldest entry is dropped first (a resume from before it gets ``resync``)."""
    inbox_max_bytes: int = 256 * 1024
    """Stored bytes of the entries kept per user inbox; past it the oldest entries are dropped first (at least ``max_inbox_body_bytes`` + 1 KiB)."""
    max_inbox_body_bytes: int = 8 * 1024
    """Largest ``body`` of one inbox entry (``notify``), in encoded msgpack bytes; at most 32 KiB."""
    inbox_queue: int = 1024
    """Notifies queued for the inbox writer before ``notify`` callers wait (room logic gets ``rate_limited``)."""
    welcome_rooms: int = 20
    """Rooms of the user listed in ``welcome`` (at most 100); the rest are paged with ``my_rooms``."""
    logics: Mapping[str, Callable[[], Any]] = dataclasses.field(default_factory=dict)
    """Room logic factories by name (``create`` names one with ``logic``)."""

    # -- cluster (README "Several nodes") --
    cluster: str | None = None
    """Redis URL of the cluster directory (``redis://HOST:PORT/DB``, ``rediss://...``, ``unix:///PATH``):
    nodes with the same directory (and prefix) form one cluster; each room lives on one node, and a
    request for it on another is answered ``moved``. Unset: one process, no Redis."""
    cluster_prefix: str = "roost:"
    """Prefix of every key of the cluster directory (several clusters may share one Redis)."""
    advertise_url: str | None = None
    """The ``ws://`` or ``wss://`` address other nodes send this node's rooms' clients to; default
    ``ws://HOST:PORT/`` as bound (required when ``host`` is a wildcard such as ``0.0.0.0``)."""
    lease_period: float = 10.0
    """How long the directory keeps a silent node's rooms assigned to it (renewed every third of it):
    a node that dies is known dead after this, a paused one is no longer sent clients."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            problem = _problem(field.name, getattr(self, field.name))
            if problem is not None:
                raise ConfigError(f"{field.name} {problem}")
        if not self.heartbeat_min_ms <= self.heartbeat_default_ms <= self.heartbeat_max_ms:
            raise ConfigError("heartbeat_default_ms must lie between heartbeat_min_ms and heartbeat_max_ms")
        if not 0 <= self.port <= 65535:
            raise ConfigError("port must be 0..65535")
        for name in ("max_meta_bytes", "max_presence_bytes", "max_chat_meta_bytes", "max_state_bytes",
                     "max_inbox_body_bytes"):
            cap = getattr(SERVER_LIMITS, name)  # what every client accepts from a server
            if getattr(self, name) > cap:
                raise ConfigError(f"{name} must be at most {cap}")
        if self.page_default > 100:
            raise ConfigError("page_default must be at most 100")
        if self.welcome_rooms > 100:
            raise ConfigError("welcome_rooms must be at most 100")
        if self.inbox_max_bytes < self.max_inbox_body_bytes + 1024:
            raise ConfigError("inbox_max_bytes must be at least max_inbox_body_bytes + 1024 (one entry at the largest)")
        # Bounds so small that ordinary replies overflow them would close healthy members as slow
        # consumers (a join snapshot is up to ~600 KB: below that, a member with a backlog can be
        # closed by its own join; the default keeps a whole server frame).
        if self.outbox_max_bytes < _MIN_OUTBOX_BYTES:
            raise ConfigError(f"outbox_max_bytes must be at least {_MIN_OUTBOX_BYTES}")
        if self.outbox_max_frames < _MIN_OUTBOX_FRAMES:
            raise ConfigError(f"outbox_max_frames must be at least {_MIN_OUTBOX_FRAMES}")
        if len(self.session_secret) < 16:
            raise ConfigError("session_secret must be at least 16 bytes")
        if self.cluster is not None and not re.fullmatch(r"(rediss?|unix)://\S+", self.cluster):
            raise ConfigError("cluster must be a redis://, rediss:// or unix:// URL")
        if self.advertise_url is not None and not re.fullmatch(r"wss?://\S{1,500}", self.advertise_url):
            raise ConfigError("advertise_url must be a ws:// or wss:// URL")
        if self.cluster is not None and self.advertise_url is None and self.host in ("0.0.0.0", "::", ""):
            raise ConfigError("advertise_url must be set in a cluster when host is a wildcard "
                              "(the address other nodes send this node's clients to)")
        if self.lease_period < 0.3:
            raise ConfigError("lease_period must be at least 0.3 seconds")

    @functools.cached_property
    def limits(self) -> Limits:
        """The codec limits for frames clients send.

        Built once per config (every inbound frame is decoded with them: a new ``Limits`` per frame
        cost ~3-4 k instructions). A frozen dataclass still has a ``__dict__`` for ``cached_property``
        to fill; ``replace`` makes a new config, which builds its own.
        """
        return Limits(max_frame_bytes=self.max_frame_bytes, max_depth=self.max_depth, max_chat_chars=self.max_chat_chars,
                      max_meta_bytes=self.max_meta_bytes, max_presence_bytes=self.max_presence_bytes,
                      max_chat_meta_bytes=self.max_chat_meta_bytes, max_state_bytes=self.max_state_bytes)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(
        cls,
        values: Mapping[str, Any],
        *,
        base: Config | None = None,
        parse_strings: bool = False,
        describe: Callable[[str], str] | None = None,
    ) -> Config:
        """Apply plain values (as TOML has them) over ``base``, checking names, types and ranges.

        ``parse_strings``: every value is a string to parse (the environment's case). ``describe(name)``
        names a setting in errors (default ``setting 'name'``)."""
        describe = describe or (lambda name: f"setting {name!r}")
        base = base or cls()
        changes: dict[str, Any] = {}
        for name, value in values.items():
            if name not in SETTINGS:
                raise ConfigError(f"unknown {describe(name)}{_did_you_mean(name, describe)}; "
                                  f"valid settings: {', '.join(SETTINGS)}")
            changes[name] = _coerce(describe(name), value, _KINDS[name], parse_strings=parse_strings)
            problem = _problem(name, changes[name])
            if problem is not None:
                raise ConfigError(f"{describe(name)} {problem}")
        return dataclasses.replace(base, **changes)

    @classmethod
    def from_toml(cls, path: Path, *, base: Config | None = None) -> Config:
        """Read a TOML file whose top-level keys are setting names (or whose ``[roost]`` table holds them)."""
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except UnicodeDecodeError:  # tomllib decodes before it parses, and lets this one through
            raise ConfigError(f"config {path} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
        table = data
        if isinstance(data.get("roost"), dict):
            table = data["roost"]
            table.update({key: value for key, value in data.items() if key != "roost"})  # refused below
        try:
            return cls.from_mapping(table, base=base)
        except ConfigError as exc:
            raise ConfigError(f"config {path}: {exc}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, base: Config | None = None) -> Config:
        """Apply ``ROOST_<SETTING>`` variables (e.g. ``ROOST_PORT=9000``).

        Every other ``ROOST_*`` name is refused (a typo must not pass for a default), except
        :data:`CLIENT_VARIABLES`, which ``roost serve --dev`` prints for clients and which a shell
        may therefore hold: those are ignored. A list (``ROOST_KEY_FILES``) is ``os.pathsep``-separated.
        """
        values: dict[str, str] = {}
        for key, value in environ.items():
            if not key.startswith(ENV_PREFIX) or key in CLIENT_VARIABLES:
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in SETTINGS or key != env_name(name):
                raise ConfigError(f"unknown environment variable {key}{_did_you_mean(name, env_name)}; "
                                  f"{', '.join(CLIENT_VARIABLES[:-1])} and {CLIENT_VARIABLES[-1]} "
                                  "are for clients and ignored")
            values[name] = value
        return cls.from_mapping(values, base=base, parse_strings=True, describe=env_name)


ENV_PREFIX = "ROOST_"
CLIENT_VARIABLES = ("ROOST_URL", "ROOST_TOKEN", "ROOST_DEV_KEY")
"""Names ``roost serve --dev`` prints for clients: reserved, never settings, ignored by ``from_env``."""

LIBRARY_ONLY = frozenset({"keyring", "wall_clock", "logics", "session_secret"})
"""Fields that only an embedding app sets (objects, not values a file can hold)."""

SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config) if f.name not in LIBRARY_ONLY)
"""Field names a TOML file and the environment may set, in declaration order."""

_MIN_OUTBOX_FRAMES = 64
_MIN_OUTBOX_BYTES = 64 * 1024
"""Fewest frames an outbox may hold: a turn's replies and events for one member are several frames."""

POSITIVE = frozenset({
    "auth_timeout", "max_pending_handshakes", "heartbeat_min_ms", "heartbeat_max_ms", "heartbeat_factor",
    "close_timeout", "max_frame_bytes", "max_depth", "max_chat_chars", "rate", "burst",
    "max_rooms_per_connection", "max_sessions_per_user", "outbox_max_frames", "outbox_max_bytes",
    "default_max_members", "room_inbox_size", "replay_events", "history_limit", "page_default",
    "restart_period", "room_ttl", "solo_room_ttl", "max_meta_bytes", "max_presence_bytes",
    "max_chat_meta_bytes", "max_state_bytes", "max_http_body_bytes", "guest_ttl", "guest_burst", "guest_proofs",
    "inbox_max_entries", "inbox_max_bytes", "max_inbox_body_bytes", "inbox_queue", "welcome_rooms", "receipt_window",
    "lease_period",
})
"""Numeric settings for which 0 makes no sense; every other number must merely not be negative."""


def env_name(name: str) -> str:
    """The environment variable of setting ``name``: ``port`` -> ``ROOST_PORT``."""
    return ENV_PREFIX + name.upper()


def _did_you_mean(name: str, describe: Callable[[str], str]) -> str:
    """`` (did you mean 'port'?)`` for a near miss among the settings, else nothing."""
    close = difflib.get_close_matches(name, SETTINGS, n=3, cutoff=0.7)
    if not close:
        return ""
    shown = [env_name(match) if describe is env_name else repr(match) for match in close]
    return f" (did you mean {' or '.join(shown)}?)"


def _problem(name: str, value: Any) -> str | None:
    """What is wrong with a value of the right type (a range), or None. One rule for every source."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return "must be a finite number"
        if name in POSITIVE and value <= 0:
            return "must be positive"
        if value < 0:
            return "must not be negative"
    if name == "data_dir" and value == "":
        return "must not be empty"
    if name == "service_key" and value == "":
        return "must not be empty (leave it out to disable the admin API)"
    return None


def _coerce(what: str, value: Any, kind: type, *, parse_strings: bool) -> Any:
    """``value`` as a setting of type ``kind``. A TOML value must have that type already (an integer
    is also a number); an environment string is parsed. Nothing is converted lossily (``port = 1.5``
    is refused, not truncated) and no number may be NaN or infinite."""
    text = value.strip() if parse_strings and isinstance(value, str) else None
    if kind is str:
        if isinstance(value, str):
            return value
    elif kind is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _BOOLEANS:
            return _BOOLEANS[text.lower()]
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"[+-]?[0-9]+", text):
            return int(text)
    elif kind is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif text is not None and re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)",
                                               text.lower()):
            number = float(text)
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{what} must be a finite number, got {value!r}")
            return number
    elif kind is tuple:
        if text is not None:
            return tuple(item for item in value.split(os.pathsep) if item)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
    raise ConfigError(f"{what} must be {_TYPE_WORDS.get(kind, kind.__name__)}, got {value!r}")


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               tuple: "a list of strings"}


def _kinds() -> dict[str, type]:
    """Each setting's value type, from its annotation (not its default: ``None`` says nothing);
    ``X | None`` is ``X`` (such a setting is unset by leaving it out)."""
    hints = typing.get_type_hints(Config)
    kinds: dict[str, type] = {}
    for name in SETTINGS:
        hint = hints[name]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        kind = typing.get_origin(hint) or hint
        if kind not in _TYPE_WORDS:
            raise TypeError(f"Config.{name}: a {hint} cannot come from a file; add it to LIBRARY_ONLY")
        kinds[name] = kind
    return kinds


_KINDS = _kinds()
