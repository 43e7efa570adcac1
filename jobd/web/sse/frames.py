"""The messages a stream sends of its own (the bus encodes the rest), and which events end a run.

Every message is an `id:` line and a `data:` line holding one JSON object whose `type` says what
it is; there are no `event:` names, so a plain EventSource with `onmessage` sees them all.
"""

from __future__ import annotations

from jobd.events import Event, encode_frame
from jobd.models import Run, status_update
from jobd.summary import TERMINAL

HEARTBEAT = b": ping\n\n"
RUN_TYPES = frozenset({"status_update", "log"})
FIREHOSE_TYPES = frozenset({"status_update", "log", "summary", "fire_skipped"})


def retry_hint(retry_ms: int) -> bytes:
    return f"retry: {retry_ms}\n\n".encode()


def connected(event_id: int, run_id: int | None) -> bytes:
    return encode_frame(event_id, {"type": "connected", "run_id": run_id})


def snapshot(event_id: int, run: Run) -> bytes:
    return encode_frame(event_id, {"type": "status_update", **status_update(run)})


def shutdown(event_id: int) -> bytes:
    return encode_frame(event_id, {"type": "shutdown"})


def error(event_id: int, reason: str, message: str) -> bytes:
    """The last message of a stream that ends for another reason than its run's end or a shutdown."""
    return encode_frame(event_id, {"type": "error", "message": message, "reason": reason})


def ends_run(event: Event) -> bool:
    return event.type == "status_update" and event.status in TERMINAL and not event.coalescible


def summary(event_id: int, data: dict[str, object]) -> bytes:
    return encode_frame(event_id, {"type": "summary", **data})
