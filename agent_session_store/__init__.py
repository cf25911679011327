"""agent_session_store: the session store for AI-agent platforms.

Declarative SQLAlchemy 2 tables and an async repository, a schema owned by Alembic, and a Redis
read-through cache. This module is the public door: everything a user needs is importable here.
"""

from __future__ import annotations

from agent_session_store import migrations
from agent_session_store.engine import create_engine
from agent_session_store.errors import (
    AgentSessionStoreError,
    ConcurrentUpdateError,
    DecryptionError,
    InvalidStateTransitionError,
    SchemaOutOfDateError,
    SessionExistsError,
    SessionNotFoundError,
    SessionValidationError,
    StorageError,
    StorageTimeoutError,
)
from agent_session_store.models import (
    AgentSession,
    SessionCheckpoint,
    SessionPage,
    SessionState,
    SessionStats,
)
from agent_session_store.readthrough import ModelCache, read_through
from agent_session_store.redis_cache import CacheStats, RedisCache
from agent_session_store.repository import ErasureReport, SessionRepository
from agent_session_store.tables import metadata

__all__ = [
    "AgentSession",
    "AgentSessionStoreError",
    "CacheStats",
    "ConcurrentUpdateError",
    "DecryptionError",
    "ErasureReport",
    "InvalidStateTransitionError",
    "ModelCache",
    "RedisCache",
    "SchemaOutOfDateError",
    "SessionCheckpoint",
    "SessionExistsError",
    "SessionNotFoundError",
    "SessionPage",
    "SessionRepository",
    "SessionState",
    "SessionStats",
    "SessionValidationError",
    "StorageError",
    "StorageTimeoutError",
    "create_engine",
    "metadata",
    "migrations",
    "read_through",
]

__version__ = "0.1.0"
