"""The browser module /static/jobd.js, run by Node (its EventSource and fetch) against a real daemon."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import structlog
from conftest import wait_for
from process import DaemonProcess, free_port
from ssehelp import serve  # noqa: F401  (a fixture)

from jobd.web import STATIC_DIR

TOKENS = [
    {"name": "browser", "token": "read-token-for-js", "scope": "read"},
    {"name": "boss", "token": "admin-token-for-js", "scope": "admin"},
]
ADMIN = {"Authorization": "Bearer admin-token-for-js"}

SCRIPT = """
import { watchRun } from %s;
const [baseUrl, runId, token] = process.argv.slice(1);
const print = (record) => console.log(JSON.stringify(record));
watchRun(Number(runId), {
  baseUrl, token: token || null, pollInterval: 50,
  onStatusChange: (u, previous) => print({cb: "status", status: u.status, previous: previous ? previous.status : null}),
  onProgress: (u) => print({cb: "progress", progress: u.progress, message: u.message}),
  onComplete: (u) => print({cb: "complete", status: u.status, result: u.result}),
  onError: (e) => print({cb: "error", message: e.message, fatal: e.fatal, status: e.status}),
});
"""


def node_with_eventsource() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    probe = subprocess.run(
        [node, "--experimental-eventsource", "-e", "process.exit(typeof EventSource == 'function' ? 0 : 1)"],
        capture_output=True,
    )
    return node if probe.returncode == 0 else None


NODE = node_with_eventsource()
pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node 20+ (--experimental-eventsource) on PATH")


class NodeWatch:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.records: list[dict] = []

    @classmethod
    async def start(cls, base_url: str, run_id: int, token: str = "") -> NodeWatch:
        assert NODE is not None
        module = json.dumps((Path(STATIC_DIR) / "jobd.js").as_uri())
        proc = await asyncio.create_subprocess_exec(
            NODE,
            "--no-warnings",
            "--experimental-eventsource",
            "--input-type=module",
            "-e",
            SCRIPT % module,
            base_url,
            str(run_id),
            token,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def finish(self, timeout: float = 20) -> list[dict]:
        """Until the module has stopped (Node exits once nothing is pending); its callbacks, in order."""
        try:
            async with asyncio.timeout(timeout):
                out, err = await self.proc.communicate()
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode == 0, err.decode()
        self.records = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        return self.records


async def test_js_module_streams_with_a_ticket(serve):
    cap = structlog.testing.CapturingLogger()
    s = await serve(auth={"tokens": TOKENS}, log=structlog.wrap_logger(cap, processors=[]))
    async with s.session.get("/static/jobd.js") as response:
        assert response.status == 200 and "watchRun" in await response.text()
    run_id, steps = await s.stepper(headers=ADMIN)
    watcher = await NodeWatch.start(s.url, run_id, "read-token-for-js")
    await wait_for(lambda: s.daemon.bus.subscriber_count == 1)
    await steps.put(("progress", 40, "forty"))
    await steps.put(None)
    records = await watcher.finish()
    assert [(r["cb"], r.get("status"), r.get("previous")) for r in records if r["cb"] != "progress"] == [
        ("status", "PROCESSING", None),
        ("status", "COMPLETED", "PROCESSING"),
        ("complete", "COMPLETED", None),
    ]
    assert {"cb": "progress", "progress": 40, "message": "forty"} in records
    assert records[-1] == {"cb": "complete", "status": "COMPLETED", "result": {"steps": "done"}}
    paths = [call.kwargs["path"] for call in cap.calls if call.kwargs.get("event") == "request"]
    assert any(p.startswith(f"/api/v1/runs/{run_id}/events?") and "ticket=[redacted]" in p for p in paths)
    assert not any("read-token-for-js" in p for p in paths)


async def test_js_module_falls_back_to_polling(serve):
    cap = structlog.testing.CapturingLogger()
    s = await serve(server={"max_streams": 1}, log=structlog.wrap_logger(cap, processors=[]))
    occupied = await s.session.get("/api/v1/events")
    try:
        run_id, steps = await s.stepper()
        watcher = await NodeWatch.start(s.url, run_id)

        def polls() -> int:  # the run's JSON view being read
            return sum(
                1
                for call in cap.calls
                if call.kwargs.get("event") == "request" and call.kwargs["path"] == f"/api/v1/runs/{run_id}"
            )

        await wait_for(lambda: polls() >= 2)
        await steps.put(("progress", 70, "seventy"))
        await wait_for(lambda: polls() >= 4)
        await steps.put(None)
        records = await watcher.finish()
    finally:
        occupied.close()
    assert {"cb": "progress", "progress": 70, "message": "seventy"} in records
    assert records[-1]["cb"] == "complete" and records[-1]["status"] == "COMPLETED"


async def test_js_module_reports_an_unknown_run_as_fatal(serve):
    s = await serve()
    records = await (await NodeWatch.start(s.url, 424242)).finish()
    assert records[-1]["cb"] == "error" and records[-1]["fatal"] is True and records[-1]["status"] == 404


RESTART_CONFIG = """
[server]
host = "127.0.0.1"
port = {port}
[store]
path = "state/jobd.db"
[workers]
concurrency = 1
shutdown_grace_s = 0
kill_grace_s = 0.5
[auth]
tokens = [{{ name = "browser", token = "read-token-for-js", scope = "read" }},
          {{ name = "boss", token = "admin-token-for-js", scope = "admin" }}]
[jobs.blocker]
command = ["sleep", "30"]
on_interrupt = "fail"
[jobs.quick]
shell = "echo '::progress::50 half way'"
"""


async def test_js_module_follows_a_run_across_a_daemon_restart(tmp_path):
    """`shutdown`, nobody listening for a while, then a daemon whose tickets are signed with a new key:
    the module comes back to the stream (with a new ticket) rather than giving up or polling."""
    config = tmp_path / "jobd.toml"
    config.write_text(RESTART_CONFIG.format(port=free_port()))
    first, second = DaemonProcess(config), DaemonProcess(config)
    try:
        url = await first.start()
        async with aiohttp.ClientSession(url, headers=ADMIN) as http:
            for job in ("blocker", "quick"):  # quick waits behind blocker, and is still PENDING after the restart
                async with http.post(f"/api/v1/jobs/{job}/trigger") as response:
                    assert response.status == 202
                    run_id = (await response.json())["run"]["id"]
            watcher = await NodeWatch.start(url, run_id, "read-token-for-js")

            async def streaming() -> bool:
                async with http.get("/metrics") as response:
                    return "jobd_sse_streams_open 1.0" in await response.text()

            await wait_for(streaming)
        assert await first.stop() == 0
        await second.start()
        records = await watcher.finish()
    finally:
        await first.cleanup()
        await second.cleanup()
    assert records[0] == {"cb": "status", "status": "PENDING", "previous": None}
    assert records[-1] == {"cb": "complete", "status": "COMPLETED", "result": None}
    assert not any(r["cb"] == "error" and r["fatal"] for r in records)
    streams = [line for line in second.events("request") if line["path"].startswith(f"/api/v1/runs/{run_id}/events?")]
    assert [line["status"] for line in streams] == [200]
    assert "ticket=[redacted]" in streams[0]["path"] and "last_event_id=" in streams[0]["path"]
    polls = [line for line in second.events("request") if line["path"] == f"/api/v1/runs/{run_id}"]
    assert len(polls) <= 1, polls  # at most the one look after a failed connection, no polling
