"""Advisory lock keys of the cluster's database, (namespace, key) pairs: one namespace per
purpose, so they never collide."""

from __future__ import annotations

LOCK_JOB = 1  # with hashtext(job): admission and claims of one job
LOCK_MIGRATE = (2, 0)
LOCK_REAPER = (3, 0)
LOCK_RETENTION = (4, 0)
LOCK_GROUP = 5  # with hashtext(group): claims of the runs of a shared concurrency group
