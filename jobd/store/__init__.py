"""Durable storage of runs and job state."""

from jobd.store.base import IdempotencyKey, JobState, RunFilter, Store, StoreError, StoreLocked, StoreUnavailable
from jobd.store.sqlite import SQLiteStore

__all__ = [
    "IdempotencyKey",
    "JobState",
    "RunFilter",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreLocked",
    "StoreUnavailable",
]
