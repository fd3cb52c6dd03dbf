"""Test kit for Roost and for apps that embed it: keys, a running engine, connected clients.

Use it as a pytest plugin (``pytest_plugins = ["roost.testing"]`` in your ``conftest.py``; pytest-trio
in trio mode; ``pip install 'roost[test]'`` brings both) to get these fixtures:

- ``roost_keys``: a fresh Ed25519 key that mints tokens (``roost_keys.token("alice")``);
- ``roost_config``: a :class:`~roost.config.Config` on 127.0.0.1, port 0, accepting those keys, with
  the admin API enabled under ``SERVICE_KEY`` (override the fixture to change settings);
- ``roost_engine``: that engine, started in the test's nursery over real sockets;
- ``roost_connect``: ``await roost_connect("alice")`` opens a client over a real socket (closed at
  the end of the test); ``await roost_connect("bob", memory=True)`` opens one over an in-memory stream.

Timer tests (heartbeats, typing, reconnect grace) should run on ``trio.testing.MockClock`` with
``autojump_threshold=0``, with clients over memory streams (``memory=True``) and the memory store:
autojump misfires when bytes are in flight on real sockets or a worker thread runs (trio #456).

Outside pytest the same pieces work directly::

    from roost import Engine
    from roost.client import open_client
    from roost.testing import TestKeys, test_config

    keys = TestKeys()
    engine = Engine(test_config(keys))
    host, port = await nursery.start(engine.serve)
    async with open_client(engine.url, keys.token("alice")) as alice:
        snapshot = await alice.create(public=True)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from roost.protocol.tokens import Keyring, generate_key, new_claims, sign

from .app import Engine
from .client import Client, start_client
from .config import Config

__all__ = ["SERVICE_KEY", "TestKeys", "connect_client", "start_engine", "test_config"]

SERVICE_KEY = "test-service-key"


class TestKeys:
    """A signing key for tests: the engine gets its public half, tests mint tokens with it."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.kid, self.signing_key = generate_key()
        self.keyring = Keyring({self.kid: self.signing_key.verify_key})
        self._clock = clock

    def token(
        self,
        sub: str,
        name: str | None = None,
        *,
        ttl: float = 3600,
        room: str | None = None,
        role: str | None = None,
        now: float | None = None,
    ) -> str:
        """A valid token for ``sub`` (display name defaults to ``sub`` capitalised)."""
        claims = new_claims(sub=sub, name=name if name is not None else sub.capitalize(), kid=self.kid,
                            now=self._clock() if now is None else now, ttl=ttl, room=room, role=role)
        return sign(claims, self.signing_key)


def test_config(keys: TestKeys, **overrides: Any) -> Config:
    """A config for tests: loopback, port 0, the test keys, the admin API on ``SERVICE_KEY``."""
    return Config(host="127.0.0.1", port=0, keyring=keys.keyring, service_key=SERVICE_KEY).replace(**overrides)


test_config.__test__ = False  # type: ignore[attr-defined]


async def start_engine(nursery: trio.Nursery, config: Config, **engine_kwargs: Any) -> Engine:
    """Start an engine in ``nursery``; returns once it accepts connections."""
    engine = Engine(config, **engine_kwargs)
    await nursery.start(engine.serve)
    return engine


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
def roost_keys() -> TestKeys:
    """A fresh signing key."""
    return TestKeys()


@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    """The engine's config; override this fixture to change settings."""
    return test_config(roost_keys)


@pytest.fixture
async def roost_engine(nursery: trio.Nursery, roost_config: Config) -> Engine:
    """A running engine on a real socket."""
    return await start_engine(nursery, roost_config)


connect_client = start_client
"""Open a client in a task of a nursery: :func:`roost.client.start_client`, re-exported here."""


@pytest.fixture
async def roost_connect(nursery: trio.Nursery, roost_engine: Engine, roost_keys: TestKeys) -> Connect:
    """``await roost_connect(sub, memory=False, token=None, **client_options)``: a connected client."""

    async def memory_stream() -> trio.abc.Stream:
        return roost_engine.connect_memory()

    async def connect(sub: str, *, memory: bool = False, token: str | None = None, **options: Any) -> Client:
        token = token if token is not None else roost_keys.token(sub)
        return await start_client(nursery, roost_engine.url, token, stream=memory_stream if memory else None,
                                  **options)

    return connect
