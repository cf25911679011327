"""agent_sessions: the session store for AI-agent platforms.

Declarative SQLAlchemy 2 tables and an async repository, a schema owned by Alembic, and a Redis
read-through cache. This module is the public door: everything a user needs is importable here.
"""

from __future__ import annotations

from agent_sessions import migrations
from agent_sessions.engine import create_engine
from agent_sessions.errors import (
    AgentSessionsError,
    ConcurrentUpdateError,
    InvalidStateTransitionError,
    SchemaOutOfDateError,
    SessionExistsError,
    SessionNotFoundError,
    SessionValidationError,
    StorageError,
    StorageTimeoutError,
)
from agent_sessions.models import (
    AgentSession,
    SessionCheckpoint,
    SessionPage,
    SessionState,
    SessionStats,
)
from agent_sessions.readthrough import ModelCache, read_through
from agent_sessions.redis_cache import CacheStats, RedisCache
from agent_sessions.repository import SessionRepository
from agent_sessions.tables import metadata

__all__ = [
    "AgentSession",
    "AgentSessionsError",
    "CacheStats",
    "ConcurrentUpdateError",
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
