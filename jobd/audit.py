"""The audit log: who changed what through the API, when, from where, and how it ended.

Records are handed to the store's group commit and ride along with its next transaction (on a
single node the next commit of runs, or the lazy flush within a second; in a cluster this node's
writer's next transaction, within a progress tick): an audited call never waits for a commit of
its own. A read of the log first commits what is pending, so it sees every call answered before it.
"""

from __future__ import annotations

from typing import Protocol

from jobd.store.audit import AuditFilter, AuditRecord


class AuditWriter(Protocol):
    def append_audit(self, record: AuditRecord) -> None: ...

    async def flush_audit(self) -> None: ...


class AuditReads(Protocol):
    async def list_audit(self, where: AuditFilter, *, limit: int) -> tuple[list[AuditRecord], int]: ...

    async def delete_audit(self, *, before: int, limit: int) -> int: ...


class AuditLog:
    def __init__(self, writer: AuditWriter, reads: AuditReads) -> None:
        self.writer = writer
        self.reads = reads

    def record(self, record: AuditRecord) -> None:
        self.writer.append_audit(record)

    async def page(self, where: AuditFilter, *, limit: int) -> tuple[list[AuditRecord], int]:
        """Newest first, and how many match (the cursor aside)."""
        await self.writer.flush_audit()
        return await self.reads.list_audit(where, limit=limit)


__all__ = ["AuditFilter", "AuditLog", "AuditReads", "AuditRecord", "AuditWriter"]
