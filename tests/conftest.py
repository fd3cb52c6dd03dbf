"""Shared fixtures: the engine test kit (real sockets on 127.0.0.1, port 0)."""

pytest_plugins = ["roost.testing"]
