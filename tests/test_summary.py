"""The firehose's summary message, published by jobd.summary, over a real stream."""

from __future__ import annotations

from ssehelp import NOOP, STEPPER, Served, serve  # noqa: F401  (serve is a fixture)


async def test_firehose_summary_at_most_once_per_interval(serve):
    """With an interval far longer than the test, many changes give one published summary at most."""
    s = await serve(events={"summary_interval_s": 3600})
    published = []
    s.daemon.bus.listeners.append(lambda e: published.append(e.data) if e.type == "summary" else None)
    response, stream = await s.open("/api/v1/events")
    await stream.until(lambda m: m.type == "summary")  # the opening one is the stream's own, not published
    for _ in range(3):
        run = await s.trigger("noop")
        await stream.until(
            lambda m: m.type == "status_update" and m.data["run_id"] == run["id"] and m.data["status"] == "COMPLETED"
        )
    # Every change woke the publisher; only the first one was allowed through.
    assert len(published) == 1, published
    assert len([m for m in stream.messages if m.type == "summary"]) == 2
    response.close()
