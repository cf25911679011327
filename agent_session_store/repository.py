"""SessionRepository: the async store of agent sessions and their checkpoints.

Statements are SQLAlchemy Core on the declarative tables: every write is one or two bulk
statements, reads never touch more than ``recent_checkpoints`` checkpoint rows, and rows read
back from our own database are not validated a second time.

The class is assembled from parts, one file each under ``agent_session_store/_repository/``:
``reads``, ``writes``, ``checkpoints``, ``lifecycle`` (sweeps, purges, erasure) and ``rotation``
(re-encryption) on a shared ``base``, and ``compose`` (get-or-create, read-change-write) on
reads and writes.
"""

from __future__ import annotations

from agent_session_store._repository.checkpoints import Checkpoints
from agent_session_store._repository.compose import Compose
from agent_session_store._repository.lifecycle import ErasureReport, Lifecycle
from agent_session_store._repository.reads import Reads
from agent_session_store._repository.rotation import KeyRotation, Rotation
from agent_session_store._repository.writes import Writes

__all__ = ["ErasureReport", "KeyRotation", "SessionRepository"]


class SessionRepository(Compose, Reads, Writes, Checkpoints, Lifecycle, Rotation):
    """Create, read, update and sweep agent sessions.

    Each call is its own transaction, committed before it returns, unless the repository is
    bound to a caller's ``AsyncSession`` with :meth:`bind`. One repository is safe to share
    between many tasks.

    Args:
        session_factory: the host's ``async_sessionmaker`` (any ``expire_on_commit``).
        recent_checkpoints: how many of the newest checkpoints ``get_session`` returns.
        cache: a ``ModelCache`` such as ``RedisCache``; ``None`` reads the database every time.
        max_payload_bytes: the largest serialized context, metadata or checkpoint data accepted.
        clock: returns the current UTC-aware time; injectable for tests. A call that finds it
            returning anything else (a naive datetime, say) raises ``SessionValidationError``
            before writing anything.
        encryption: a ``FieldEncryption`` (``agent_session_store.encryption``): contexts,
            checkpoint data and shared-state values are stored, and cached, as AES-256-GCM
            ciphertext bound to their row (docs/security.md). ``None``: stored as given; an
            encrypted value read back raises ``DecryptionError``.

    Example::

        engine = create_engine("sqlite+aiosqlite:///sessions.db")
        await migrations.upgrade(engine)
        repo = SessionRepository(async_sessionmaker(engine))
        session = await repo.create_session("planner", user_id="u1")
    """
