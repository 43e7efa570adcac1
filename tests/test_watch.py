"""The Python client's watch()/wait() and the CLI's live view, against real `jobd serve` processes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web
from conftest import wait_for
from process import DaemonProcess, free_port
from ssehelp import NO_TIMEOUT, SSEReader

from jobd.cli import ProgressView, follow
from jobd.client import ApiError, JobdClient
from jobd.sseparse import SSEParser

JOBS = """
[jobs.blocker]
command = ["sleep", "30"]
on_interrupt = "fail"
[jobs.quick]
shell = "echo '::progress::50 half way'; sleep 0.2"
overlap = "allow"
max_concurrency = 10
[jobs.partial]
shell = "echo '::counts::total=2 success=1 failed=1'"
[jobs.broken]
shell = "echo nope >&2; exit 3"
[jobs.slow]
command = ["sleep", "30"]
"""


def write_config(tmp_path, *, port: int = 0, extra: str = "", concurrency: int = 4):
    path = tmp_path / "jobd.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n{extra}\n[store]\npath = "state/jobd.db"\n'
        f"[workers]\nconcurrency = {concurrency}\nshutdown_grace_s = 0\nkill_grace_s = 0.5\n{JOBS}"
    )
    return path


@pytest.fixture
async def daemons():
    started: list[DaemonProcess] = []

    def make(path):
        process = DaemonProcess(path)
        started.append(process)
        return process

    yield make
    for process in started:
        await process.cleanup()


def requests_to(daemon: DaemonProcess, path: str) -> list[dict]:
    return [line for line in daemon.events("request") if line["path"].split("?")[0] == path]


async def test_watch_reconnects_across_a_daemon_restart(tmp_path, daemons):
    config = write_config(tmp_path, port=free_port(), concurrency=1)
    first = daemons(config)
    url = await first.start()
    async with JobdClient(url) as client:
        await client.trigger("blocker")
        run = await client.trigger("quick")  # waits: the only worker is busy
        updates: list[dict] = []
        got_first = asyncio.Event()

        async def watch() -> None:
            async for update in client.watch(run["id"], max_backoff=0.5):
                updates.append(update)
                got_first.set()

        watcher = asyncio.create_task(watch())
        try:
            async with asyncio.timeout(10):
                await got_first.wait()
            assert updates[0]["status"] == "PENDING"
            # A stream of our own on the firehose, to see what SIGTERM sends to open streams.
            firehose = await client.session.get(f"{url}/api/v1/events", timeout=NO_TIMEOUT)
            reader = SSEReader(firehose)
            await reader.until(lambda m: m.type == "summary")
            assert await first.stop() == 0
            rest = await reader.rest()
            assert rest[-1].type == "shutdown" and rest[-1].id is not None, rest
            firehose.close()
            second = daemons(config)
            await second.start()
            async with asyncio.timeout(20):
                await watcher
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    statuses = [u["status"] for u in updates]
    assert statuses[0] == "PENDING" and statuses[-1] == "COMPLETED", statuses
    assert updates[-1]["progress"] == 100
    # The second daemon was watched over its stream (logged once the stream has ended), not polled.
    await wait_for(lambda: requests_to(second, f"/api/v1/runs/{run['id']}/events"))
    assert not requests_to(second, f"/api/v1/runs/{run['id']}")


async def test_watch_falls_back_to_polling_when_streams_are_unavailable(tmp_path, daemons):
    daemon = daemons(write_config(tmp_path, extra="max_streams = 1"))
    url = await daemon.start()
    async with aiohttp.ClientSession() as http, JobdClient(url) as client:
        # Take the only stream slot, so the run's stream answers 503.
        async with http.get(f"{url}/api/v1/events") as occupied:
            assert occupied.status == 200
            run = await client.trigger("quick")
            updates = [u async for u in client.watch(run["id"], poll_interval=0.05)]
            final = await client.wait(run["id"], poll_interval=0.05)
    assert updates[-1]["status"] == "COMPLETED"
    assert set(updates[-1]) >= {
        "type",
        "run_id",
        "job",
        "status",
        "progress",
        "message",
        "counts",
        "error",
        "result",
        "updated_at",
    }
    assert final["status"] == "COMPLETED" and final["id"] == run["id"]
    refused = await wait_for(lambda: requests_to(daemon, f"/api/v1/runs/{run['id']}/events"))
    assert all(line["status"] == 503 for line in refused)
    assert requests_to(daemon, f"/api/v1/runs/{run['id']}")  # polled


async def jobd_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            out, _ = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode()


def jobd_on_a_terminal(*args: str) -> tuple[int, str]:
    """`jobd ARGS` with its output on a pseudo-terminal: what someone at a terminal sees."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobd", *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
        )
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the program has exited and closed its side
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        code = proc.wait(timeout=30)
    return code, b"".join(chunks).decode()


async def test_wait_and_the_cli_exit_codes(tmp_path, daemons):
    daemon = daemons(write_config(tmp_path))
    url = await daemon.start()
    async with JobdClient(url) as client:
        broken = await client.wait((await client.trigger("broken"))["id"])
        assert broken["status"] == "FAILED" and broken["exit_code"] == 3
        with pytest.raises(ApiError) as unknown:
            await client.wait(987654)
        assert unknown.value.status == 404
        results = await asyncio.gather(
            jobd_cli("trigger", "quick", "--wait", "--url", url),
            jobd_cli("watch", str(broken["id"]), "--url", url),
            asyncio.to_thread(jobd_on_a_terminal, "trigger", "quick", "--wait", "--url", url),
            jobd_cli("watch", "1", "--url", f"http://127.0.0.1:{free_port()}"),
            jobd_cli("trigger", "quick", "--stdin", "--json", "--url", url, stdin=b'{"n": 1}\n\n{"n": 2}\n{"n": 3}\n'),
            jobd_cli("trigger", "quick", "--stdin", "--url", url, stdin=b'{"n": 1}\nnot json\n'),
        )
        (
            (ok, ok_out),
            (failed, failed_out),
            (on_tty, tty_out),
            (unreachable, unreachable_out),
            (batch, batch_out),
            (bad, bad_out),
        ) = results
        assert (ok, failed, on_tty, unreachable) == (0, 1, 0, 3), results
        assert "cannot reach" in unreachable_out
        # On a terminal: a bar redrawn in place with the message, then how it ended on a line of its own.
        assert "\r\x1b[2K" in tty_out and "] " in tty_out and "% half way" in tty_out, tty_out
        assert tty_out.replace("\r\n", "\n").rstrip().endswith(": COMPLETED"), tty_out
        # Params as JSON lines on stdin: one run each, in one batch trigger; a bad line stops it all.
        assert batch == 0, batch_out
        assert [run["params"] for run in json.loads(batch_out)["runs"]] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert bad == 2 and "Expecting value" in bad_out
        # Piped: plain lines, no carriage returns; progress with its message, then how it ended.
        assert "\r" not in ok_out
        assert "50% half way" in ok_out
        assert ok_out.strip().splitlines()[-1].endswith(": COMPLETED")
        assert failed_out.strip().endswith("FAILED: exit code 3: nope")

        # The same code path in-process, for the other endings.
        partial = await client.trigger("partial")
        out = io.StringIO()
        assert await follow(client, partial["id"], out=out) == 0
        assert out.getvalue().strip().endswith(": PARTIAL")
        slow = await client.trigger("slow")
        following = asyncio.create_task(follow(client, slow["id"], json_lines=True, out=out))
        await wait_for(lambda: '"status": "PROCESSING"' in out.getvalue())
        await client.cancel(slow["id"])
        assert await following == 2
        assert json.loads(out.getvalue().strip().splitlines()[-1])["status"] == "CANCELLED"


def test_sse_parser_handles_split_chunks_and_comments():
    parser = SSEParser()
    stream = b'retry: 1500\n\n: ping\n\nid: 7\ndata: {"type":"connected"}\n\nid: 8\ndata: {"a":\ndata: 1}\r\n\r\n'
    messages = []
    for index in range(len(stream)):
        messages += parser.feed(stream[index : index + 1])
    assert messages == [("7", '{"type":"connected"}'), ("8", '{"a":\n1}')]
    assert parser.retry_ms == 1500
    # The spec's retry is ASCII digits; anything else (a superscript two is a digit to isdigit()) is ignored.
    assert parser.feed("retry: ²\nretry: 1e3\n\n".encode()) == [] and parser.retry_ms == 1500


def test_progress_view_redraws_a_bar_on_a_terminal():
    out = io.StringIO()
    view = ProgressView(out, tty=True, bar_width=10)
    update = {
        "run_id": 7,
        "job": "nightly",
        "status": "PROCESSING",
        "progress": 40.0,
        "message": "copying",
        "error": None,
    }
    view.show(update)
    view.show(update)  # unchanged: not redrawn
    view.show({**update, "progress": 100.0, "status": "COMPLETED"})
    view.done({**update, "status": "COMPLETED"})
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 2
    assert "[####......]  40.0% copying" in text and "[##########] 100.0%" in text
    assert text.endswith("\nrun 7 nightly: COMPLETED\n")


async def test_an_error_that_is_json_but_not_a_problem_object_is_an_api_error(aiohttp_server):
    # What a proxy in front of jobd may answer: JSON, but a list, not a problem+json object.
    async def proxy_error(request: web.Request) -> web.Response:
        status = 401 if request.path.endswith("/events") else 502
        return web.json_response(["upstream", "unavailable"], status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy_error)
    server = await aiohttp_server(app)
    async with JobdClient(str(server.make_url(""))) as client:
        with pytest.raises(ApiError) as refused:
            await client.queue()
        assert (refused.value.status, refused.value.body) == (502, {})
        assert refused.value.detail == '["upstream", "unavailable"]'
        with pytest.raises(ApiError) as unauthorized:
            await anext(client.watch(1))
        assert unauthorized.value.status == 401
