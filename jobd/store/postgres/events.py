"""The feed of committed changes, and the wake-up notifications.

Every change writes an event row in its own transaction. Rows are read in (xid, id) order, and
only those of transactions older than every transaction still running (the snapshot's xmin):
those are all settled, and no row can appear before them any more. Row ids alone would not do:
a transaction may take an id, commit after a later id's transaction, and be skipped by a reader
that had moved past it. A row's `id` is what clients see (the SSE id); `Position` is where a
reader is in the feed, and event_position() finds it again from an id.

Notifications carry no data: they only say "look again", and readers poll as well, so a lost one
costs latency, never a change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from jobd.store.postgres.runs import Conn

CHANNEL_WAKEUP = "jobd_wakeup"  # new runs to claim
CHANNEL_CONTROL = "jobd_control"  # cancel requests, pause and resume
CHANNEL_EVENTS = "jobd_events"  # new rows in the feed

Position = tuple[int, int]  # (xid, id) of the last row read
START: Position = (0, 0)

_COLUMNS = "id, xid::text::bigint, type, run_id, job, status, data, created_at"
_INSERT = "INSERT INTO events (type, run_id, job, status, data) VALUES (%s, %s, %s, %s, %s) RETURNING id"
_AFTER = (
    f"SELECT {_COLUMNS} FROM events "
    "WHERE (xid, id) > (%s::text::xid8, %s) AND xid < pg_snapshot_xmin(pg_current_snapshot()) "
    "ORDER BY xid, id LIMIT %s"
)
_END = (
    "SELECT xid::text::bigint, id FROM events WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) "
    "ORDER BY xid DESC, id DESC LIMIT 1"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    id: int
    xid: int
    type: str
    run_id: int | None
    job: str | None
    status: str | None
    data: str  # the JSON message as sent to clients, kept as text: written once, sent as it is
    created_at: int

    @property
    def position(self) -> Position:
        return (self.xid, self.id)


@dataclasses.dataclass(frozen=True, slots=True)
class NewEvent:
    type: str
    data: str
    run_id: int | None = None
    job: str | None = None
    status: str | None = None


async def append_event(
    conn: Conn, type: str, data: str, *, run_id: int | None = None, job: str | None = None, status: str | None = None
) -> int:
    """Add an event to the transaction that makes the change; returns its id."""
    cur = await conn.execute(_INSERT, (type, run_id, job, status, data))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def append_events(conn: Conn, events: Iterable[NewEvent]) -> None:
    """append_event() for a batch (a group commit's transitions)."""
    async with conn.cursor() as cur:
        await cur.executemany(_INSERT, [(e.type, e.run_id, e.job, e.status, e.data) for e in events])


async def events_after(conn: Conn, position: Position, limit: int = 1000) -> list[Event]:
    """The settled events after `position`, in feed order; the last one's position is where the
    next call starts. Run it outside a transaction that has written (its own xid would hold the
    horizon back)."""
    cur = await conn.execute(_AFTER, (position[0], position[1], limit))
    return [Event(*row) for row in await cur.fetchall()]


async def feed_end(conn: Conn) -> Position:
    """Where a reader that wants only what comes from now on starts."""
    cur = await conn.execute(_END)
    row = await cur.fetchone()
    return START if row is None else (int(row[0]), int(row[1]))


async def event_position(conn: Conn, event_id: int) -> Position | None:
    """The feed position of the event a client last saw (its Last-Event-ID); None if retention
    removed it."""
    cur = await conn.execute("SELECT xid::text::bigint, id FROM events WHERE id = %s", (event_id,))
    row = await cur.fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


async def trim_events(conn: Conn, before_ms: int, limit: int = 10_000) -> int:
    """Retention: delete up to `limit` events older than `before_ms`; returns how many."""
    cur = await conn.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE created_at < %s ORDER BY id LIMIT %s)",
        (before_ms, limit),
    )
    return cur.rowcount


async def notify(conn: Conn, channel: str) -> None:
    """A wake-up with no payload, sent when the transaction commits (at once in autocommit)."""
    await conn.execute("SELECT pg_notify(%s, '')", (channel,))


async def notify_wakeup(conn: Conn) -> None:
    """New runs to claim: every node looks."""
    await notify(conn, CHANNEL_WAKEUP)
