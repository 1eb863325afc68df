"""Persistence: typed SQLAlchemy models, engine/session set-up and Alembic migrations."""
from db.database import Database

__all__ = ["Database"]
