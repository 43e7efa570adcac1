"""The feed of committed changes, and the wake-up notifications.

Every change writes an event row in its own transaction. Rows are read in (xid, id) order, and
only those of transactions older than every transaction still running (the snapshot's xmin):
those are all settled, and no row can appear before them any more. Row ids alone would not do:
a transaction may take an id, commit after a later id's transaction, and be skipped by a reader
that had moved past it. Every node reads the same settled rows in the same order, so a row's
`Position` is its place in one order the whole cluster shares; its `key` (the position as one
number) is the SSE id, and a client resuming on any node continues right after it.

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

# A position as one number: the xid, then the row id in 19 decimal digits (a bigint never has more),
# so keys compare as positions do. Every key is at least KEY_BASE (xids start at 3); a smaller
# number is a row id, the SSE id of earlier versions of jobd.
KEY_BASE = 10**19

_COLUMNS = "id, xid::text::bigint, type, run_id, job, status, data, created_at"
_INSERT = "INSERT INTO events (type, run_id, job, status, data) VALUES (%s, %s, %s, %s, %s) RETURNING id"
_AFTER = (
    f"SELECT {_COLUMNS} FROM events "
    "WHERE (xid, id) > (%s::text::xid8, %s) AND xid < pg_snapshot_xmin(pg_current_snapshot()) "
    "ORDER BY xid, id LIMIT %s"
)
# The resume point itself, then what follows it: a missing first row means retention took it.
_FROM = (
    f"SELECT {_COLUMNS} FROM events "
    "WHERE (xid, id) >= (%s::text::xid8, %s) AND xid < pg_snapshot_xmin(pg_current_snapshot()) "
    "ORDER BY xid, id LIMIT %s"
)
_END = (
    "SELECT xid::text::bigint, id FROM events WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) "
    "ORDER BY xid DESC, id DESC LIMIT 1"
)

_LAST = "SELECT xid::text::bigint, id FROM events ORDER BY xid DESC, id DESC LIMIT 1"


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

    @property
    def key(self) -> int:
        return key_of(self.position)


def key_of(position: Position) -> int:
    return position[0] * KEY_BASE + position[1]


def position_of(key: int) -> Position:
    """The position of a key (see KEY_BASE); a key below KEY_BASE is a row id, for event_position()."""
    return divmod(key, KEY_BASE)


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


async def events_following(conn: Conn, position: Position, limit: int = 1000) -> tuple[list[Event], bool]:
    """events_after() for a reader that read the row at `position` itself, and whether that row is
    still there: once retention has deleted it, rows after it may have gone unread (False)."""
    cur = await conn.execute(_FROM, (position[0], position[1], limit + 1))
    rows = [Event(*row) for row in await cur.fetchall()]
    if rows and rows[0].position == position:
        return rows[1:], True
    return rows[:limit], position == START


async def held_back(conn: Conn, position: Position) -> bool:
    """Whether rows after `position` exist that the horizon still holds back: committed, or not,
    behind an older transaction that has not ended (which may write no event, and so send no
    NOTIFY when it does end)."""
    cur = await conn.execute(  # in the feed's order, as _AFTER: one step along its index
        "SELECT 1 FROM events WHERE (xid, id) > (%s::text::xid8, %s) ORDER BY xid, id LIMIT 1",
        (position[0], position[1]),
    )
    return await cur.fetchone() is not None


async def last_committed(conn: Conn) -> Position:
    """The position of the newest event committed so far, settled or not: a reader that has read
    up to it has every change made before the call."""
    cur = await conn.execute(_LAST)
    row = await cur.fetchone()
    return START if row is None else (int(row[0]), int(row[1]))


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


async def events_resumed(conn: Conn, position: Position, limit: int) -> list[Event] | None:
    """The settled events after `position`, in feed order, for a client resuming there; None when
    they cannot all be had: the row at `position` is gone (retention deletes the feed from its
    start, so while a row is there, everything after it is too) or more than `limit` follow it."""
    cur = await conn.execute(_FROM, (position[0], position[1], limit + 2))
    rows = [Event(*row) for row in await cur.fetchall()]
    if not rows or rows[0].position != position or len(rows) > limit + 1:
        return None
    return rows[1:]


async def trim_horizon(conn: Conn, keep: int) -> Position | None:
    """Where retention may delete up to: the position before the newest `keep` settled events (the
    ones a client may still resume from); None while there are no more than that."""
    cur = await conn.execute(
        "SELECT xid::text::bigint, id FROM events WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) "
        "ORDER BY xid DESC, id DESC OFFSET %s LIMIT 1",
        (keep,),
    )
    row = await cur.fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


async def trim_events(conn: Conn, *, through: Position, created_before: int, limit: int) -> int:
    """Retention: delete the oldest events, in feed order, up to and including `through` but
    stopping at the first one created at or after `created_before`; at most `limit` of them.
    Always from the start of the feed, so what is left is a feed's unbroken tail (events_resumed()
    relies on it). Returns how many went."""
    cur = await conn.execute(
        "SELECT id, created_at FROM events WHERE (xid, id) <= (%s::text::xid8, %s) ORDER BY xid, id LIMIT %s",
        (through[0], through[1], limit),
    )
    doomed: list[int] = []
    for row_id, created_at in await cur.fetchall():
        if created_at >= created_before:
            break
        doomed.append(int(row_id))
    if not doomed:
        return 0
    cur = await conn.execute("DELETE FROM events WHERE id = ANY(%s)", (doomed,))
    return cur.rowcount


async def notify(conn: Conn, channel: str) -> None:
    """A wake-up with no payload, sent when the transaction commits (at once in autocommit)."""
    await conn.execute("SELECT pg_notify(%s, '')", (channel,))


async def notify_wakeup(conn: Conn) -> None:
    """New runs to claim: every node looks."""
    await notify(conn, CHANNEL_WAKEUP)
