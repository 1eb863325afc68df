"""Persistence: typed SQLAlchemy models, engine/session set-up and Alembic migrations."""
from db.database import Database, session_scope_for

__all__ = ["Database", "session_scope_for"]
