"""Roost engine: gateway, router, supervised room actors, stores, reaper and the ``roost`` CLI."""
