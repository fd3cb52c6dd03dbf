"""Roost engine: gateway, router, supervised room actors, stores and the ``roost`` CLI.

The public surface is re-exported here.
"""

from .app import Engine as Engine
from .config import Config as Config
from .errors import RoomError as RoomError
from .logic import RoomContext as RoomContext
from .logic import RoomLogic as RoomLogic
from .store import Store as Store
from .store.memory import MemoryStore as MemoryStore
