"""Stopping, reloading, killing and restarting a real `jobd serve` process, with real signals, real
job processes and a real unix datagram socket in the role of systemd, on each backend: a SQLite
file, or PostgreSQL as a cluster of one node (which, started again, is the same node).

Each test runs few daemons and checks many things on each, to keep the suite fast.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import BACKENDS, TESTS, wait_for
from process import DaemonProcess
from ssehelp import NO_TIMEOUT, SSEReader
from test_alerts import Receiver, receiver  # noqa: F401  (the fixture, too)

from jobd.models import Run, RunStatus, TriggerSource, iso_ms, now_ms
from jobd.retention import DAY_MS
from jobd.runlog import log_path
from jobd.store import IdempotencyKey, JobState, SQLiteStore

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
TERMINAL = {"COMPLETED", "PARTIAL", "FAILED", "CANCELLED"}
ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def write_config(path: Path, *, store: str, workers: str, jobs: str, extra: str = "") -> Path:
    """`store`: the conftest `store_toml` of the test's backend."""
    path.write_text(f'[server]\nhost = "127.0.0.1"\nport = 0\n{store}[workers]\n{workers}\n{extra}\n{jobs}')
    return path


def store_url(config: Path) -> str | None:
    """The PostgreSQL database the config names, or None for a SQLite file."""
    url: str | None = tomllib.loads(config.read_text())["store"].get("url")
    return url


@pytest.fixture
async def daemons() -> AsyncIterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(path: Path, env: dict[str, str] | None = None, **options: Any) -> DaemonProcess:
        process = DaemonProcess(path, env={**ENV, **(env or {})}, **options)
        started.append(process)
        return process

    yield make
    for process in started:
        await process.cleanup()


class Api:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def get(self, path: str, expect: int = 200) -> Any:
        async with self.http.get(self.url + path) as response:
            assert response.status == expect, await response.text()
            return await response.json()

    async def trigger(self, job: str, params: dict[str, Any] | None = None, **body: Any) -> Any:
        async with self.http.post(
            f"{self.url}/api/v1/jobs/{job}/trigger", json=body or {"params": params or {}}
        ) as response:
            data = await response.json()
            assert response.status == 202, data
            return data.get("run", data)

    async def run(self, run_id: int) -> dict[str, Any]:
        return (await self.get(f"/api/v1/runs/{run_id}"))["run"]

    async def until(self, run_id: int, check: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
        async def met() -> dict[str, Any] | None:
            run = await self.run(run_id)
            return run if check(run) else None

        return await wait_for(met, timeout=timeout, interval=0.02)

    async def finished(self, run_id: int) -> dict[str, Any]:
        return await self.until(run_id, lambda run: run["status"] in TERMINAL)

    async def stream(self, path: str) -> SSEReader:
        response = await self.http.get(self.url + path, timeout=NO_TIMEOUT)
        assert response.status == 200, await response.text()
        reader = SSEReader(response)
        await reader.until(lambda m: m.type == "connected")
        return reader


class NotifySocket:
    """A unix datagram socket (abstract name) standing in for systemd: records what jobd sends."""

    def __init__(self) -> None:
        self.address = f"@jobd-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def sent(self, key: str) -> list[dict[str, str]]:
        return [m for m in self.messages if key in m]

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.sock.close()


@pytest.fixture
async def notify_socket() -> AsyncIterator[NotifySocket]:
    fake = NotifySocket()
    fake.start()
    yield fake
    await fake.close()


def stored_runs(config: Path) -> dict[int, Any]:
    """The store as a stopped (or killed) daemon left it."""
    url = store_url(config)
    if url is not None:
        from psycopg import connect
        from psycopg.rows import dict_row

        with connect(url, row_factory=dict_row) as conn:
            return {row["id"]: row for row in conn.execute("SELECT * FROM runs")}
    db = sqlite3.connect(f"file:{config.parent / 'state' / 'jobd.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return {row["id"]: row for row in db.execute("SELECT * FROM runs")}
    finally:
        db.close()


def retries_of(runs: dict[int, Any], run_id: int) -> list[Any]:
    return [run for run in runs.values() if run["retry_of"] == run_id]


def no_tracebacks(daemon: DaemonProcess) -> None:
    raw = [line["text"] for line in daemon.lines if line.get("event") == "raw"]
    assert not any("Traceback" in text for text in raw), raw


# -- SIGTERM while both kinds of handler run ---------------------------------------------------------

GRACE, KILL_GRACE = 4, 1


async def test_sigterm_drains_interrupts_and_requeues(
    tmp_path: Path, daemons: Any, notify_socket: NotifySocket, store_toml: str
):
    gate = tmp_path / "gate"
    config = write_config(
        tmp_path / "jobd.toml",
        store=store_toml,
        workers=f"concurrency = 10\nshutdown_grace_s = {GRACE}\nkill_grace_s = {KILL_GRACE}",
        jobs=f"""
[jobs.gated_cmd]
shell = 'while [ ! -e "{gate}" ]; do sleep 0.02; done; echo finished'
[jobs.gated_py]
handler = "life_jobs:gated"
[jobs.gated_fail]
shell = 'while [ ! -e "{gate}" ]; do sleep 0.02; done; exit 3'
retries = 1
[jobs.stuck_cmd]
shell = "trap '' TERM; echo started; sleep 60"
overlap = "queue"
[jobs.stuck_async]
handler = "life_jobs:forever"
[jobs.stuck_sync]
handler = "life_jobs:blocking"
[jobs.no_retry]
shell = "echo started; sleep 60"
on_interrupt = "fail"
[jobs.env_cmd]
command = ["env"]
[jobs.env_py]
handler = "life_jobs:systemd_env"
""",
    )
    # As systemd starts it, with socket-activation variables meant for another process (pid 1).
    daemon = daemons(
        config,
        env={
            "NOTIFY_SOCKET": notify_socket.address,
            "WATCHDOG_USEC": "200000",
            "LISTEN_FDS": "1",
            "LISTEN_PID": "1",
            "LISTEN_FDNAMES": "http",
        },
    )
    url = await daemon.start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, url)
        # READY=1 with a STATUS= summary, once the port listens; then the watchdog pings.
        [ready] = await wait_for(lambda: notify_socket.sent("READY"))
        assert ready["READY"] == "1" and ready["STATUS"] == "9 jobs, 0 pending, 0 running"
        assert (await api.get("/readyz"))["status"] == "ready"
        await wait_for(lambda: len(notify_socket.sent("WATCHDOG")) >= 3)
        assert {m["WATCHDOG"] for m in notify_socket.sent("WATCHDOG")} == {"1"}

        # Jobs see nothing of jobd's systemd variables, nor do the processes they start.
        env_cmd = await api.finished((await api.trigger("env_cmd"))["id"])
        env_lines = env_cmd["log_tail"].splitlines()
        assert any(line.startswith("JOBD_RUN_ID=") for line in env_lines)
        assert not [line for line in env_lines if line.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_"))]
        env_py = await api.finished((await api.trigger("env_py"))["id"])
        assert env_py["result"] == {"own": [], "child": [], "has_path": True}

        gated_cmd = await api.trigger("gated_cmd")
        gated_py = await api.trigger("gated_py", {"gate": str(gate)})
        gated_fail = await api.trigger("gated_fail")
        stuck_cmd = await api.trigger("stuck_cmd")
        waiting = await api.trigger("stuck_cmd")  # queued behind it: PENDING until the next start
        stuck_async = await api.trigger("stuck_async")
        stuck_sync = await api.trigger("stuck_sync")
        no_retry = await api.trigger("no_retry")
        for run in (stuck_cmd, no_retry):
            await api.until(run["id"], lambda r: "started" in r["log_tail"])
        for run in (gated_py, stuck_async, stuck_sync):
            await api.until(run["id"], lambda r: r["message"] is not None)
        await api.until(gated_cmd["id"], lambda r: r["status"] == "PROCESSING")
        firehose = await api.stream("/api/v1/events")
        run_stream = await api.stream(f"/api/v1/runs/{stuck_async['id']}/events")

        started = asyncio.get_running_loop().time()
        daemon.signal(signal.SIGTERM)
        await wait_for(lambda: daemon.events("jobd_draining"))
        # Draining: not ready, triggers refused with a Retry-After, reads still served.
        async with http.get(f"{url}/readyz") as response:
            assert response.status == 503
        async with http.post(f"{url}/api/v1/jobs/gated_cmd/trigger") as response:
            assert response.status == 503 and response.content_type == "application/problem+json"
            assert int(response.headers["Retry-After"]) > 0 and "shutting down" in (await response.json())["detail"]
        assert (await api.get("/api/v1/runs?job=stuck_cmd"))["pagination"]["total"] == 2
        assert (await api.run(stuck_cmd["id"]))["status"] == "PROCESSING"
        # Runs that end within the grace end normally; a failure still gets its retry (for later).
        gate.touch()
        for run in (gated_cmd, gated_py):
            assert (await api.finished(run["id"]))["status"] == "COMPLETED"
        assert (await api.finished(gated_fail["id"]))["error"] == "exit code 3"

        # The rest is interrupted once the grace is over; the run's stream sees it, then ends.
        rest = await run_stream.rest(timeout=GRACE + KILL_GRACE + 10)
        final = [m.data for m in rest if m.type == "status_update"][-1]
        assert final["status"] == "FAILED" and final["error"].startswith("interrupted")
        # The firehose is told `shutdown` and closed.
        messages = await firehose.rest(timeout=GRACE + KILL_GRACE + 10)
        assert messages[-1].type == "shutdown"
        assert await daemon.wait() == 0
        took = asyncio.get_running_loop().time() - started
    # The running jobs had their grace, and the whole stop stayed within grace + kill grace + ~1 s.
    assert GRACE <= took <= GRACE + KILL_GRACE + 1 + 3, took
    assert notify_socket.sent("STOPPING") and notify_socket.sent("STATUS")[-1]["STATUS"].startswith("stopping: ")
    [extend] = notify_socket.sent("EXTEND_TIMEOUT_USEC")
    assert int(extend["EXTEND_TIMEOUT_USEC"]) >= (GRACE + KILL_GRACE) * 1_000_000
    assert daemon.events("jobd_stopped")
    assert daemon.events("run_abandoned") == daemon.events("shutdown_deadline_exceeded") == []
    no_tracebacks(daemon)

    runs = stored_runs(config)
    for run in (gated_cmd, gated_py):
        assert runs[run["id"]]["status"] == "COMPLETED"
    for run in (stuck_cmd, stuck_async, stuck_sync, no_retry):
        assert runs[run["id"]]["status"] == "FAILED", run["job"]
        assert runs[run["id"]]["error"] == "interrupted: jobd stopped while the run was in progress"
    for run in (stuck_cmd, stuck_async, stuck_sync):
        [retry] = retries_of(runs, run["id"])
        assert (retry["status"], retry["triggered_by"], retry["attempt"]) == ("PENDING", "retry", 2)
        assert retry["job"] == run["job"]
    assert retries_of(runs, no_retry["id"]) == []  # on_interrupt = "fail"
    [retry] = retries_of(runs, gated_fail["id"])
    assert (retry["status"], retry["triggered_by"], retry["attempt"]) == ("PENDING", "retry", 2)
    assert runs[waiting["id"]]["status"] == "PENDING" and runs[waiting["id"]]["started_at"] is None


# -- SIGHUP, the lock, alerts, retention and a second SIGTERM ------------------------------------------


async def seed_postgres(url: str, runs: list[Run], state: JobState, key: IdempotencyKey) -> None:
    from jobd.store.postgres import connect
    from jobd.store.postgres.cluster import save_job_state
    from jobd.store.postgres.runs import insert_runs, save_idempotent

    async with await connect(url) as conn, conn.transaction():
        await insert_runs(conn, runs)
        await save_job_state(conn, state)
        await save_idempotent(conn, key)
        await conn.execute("SELECT setval('runs_id_seq', (SELECT max(id) FROM runs))")


async def seed_history(config: Path) -> dict[str, Any]:
    """What an earlier daemon left: runs of different ages with log files, job state, a key."""
    url = store_url(config)
    store = SQLiteStore(config.parent / "state" / "jobd.db")
    if url is None:
        await store.open()
    now = now_ms()
    ages = {"old_ok": 3.0, "old_failed": 3.0, "young_failed": 1.5, "young_ok": 0.5, "last_of_old": 3.0}
    runs = {}
    for name, age in ages.items():
        finished = now - int(age * DAY_MS)
        status = RunStatus.FAILED if "failed" in name else RunStatus.COMPLETED
        runs[name] = Run(
            id=store.allocate_run_id() if url is None else len(runs) + 1,
            job="old",
            status=status,
            triggered_by=TriggerSource.CRON,
            created_at=finished - 100,
            started_at=finished - 50,
            finished_at=finished,
            updated_at=finished,
        )
    state = JobState("old", last_fire_at=now - 3 * DAY_MS, consecutive_failures=1, last_run_id=runs["last_of_old"].id)
    key = IdempotencyKey("old", "k", runs["old_ok"].id, now - 2 * DAY_MS)
    if url is None:
        await store.write(runs.values(), job_states=[state], keys=[key])
        await store.close()
    else:
        await seed_postgres(url, list(runs.values()), state, key)
    logs = config.parent / "state" / "logs"
    for run in runs.values():
        log_path(logs, run.id).parent.mkdir(parents=True, exist_ok=True)
        log_path(logs, run.id).write_text("output\n")
    return {"runs": {name: run.id for name, run in runs.items()}, "state": state, "logs": logs}


async def second_jobd_refused(tmp_path: Path, store: str, workers: str, jobs: str, daemon: DaemonProcess) -> None:
    """A second jobd on the same SQLite file refuses to start: one clear line, a non-zero exit."""
    other = write_config(tmp_path / "other.toml", store=store, workers=workers, jobs=jobs)
    second = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobd",
        "serve",
        "-c",
        str(other),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **ENV},
    )
    _, err = await asyncio.wait_for(second.communicate(), 30)
    assert second.returncode != 0
    [line] = err.decode().splitlines()
    assert daemon.proc is not None
    assert "in use by another jobd" in line and f"pid {daemon.proc.pid}" in line


async def test_reload_lock_alerts_retention_and_a_second_signal(
    tmp_path: Path, daemons: Any, receiver: Receiver, store_toml: str, backend: str
):
    flag = tmp_path / "healthy"
    jobs = f"""
[jobs.flaky]
shell = 'test -e "{flag}" || {{ echo "not yet" >&2; exit 1; }}'
alert_after_failures = 2
[jobs.slow]
shell = "trap '' TERM; echo started; sleep 60"
[jobs.deaf]
handler = "life_jobs:deaf"
[jobs.old]
command = ["true"]
"""
    extra = (
        f'[alerts]\nwebhook_url = "{receiver.url}"\nwebhook_retries = 0\n'
        "[retention]\ndays = 1\nfailed_days = 2\nfirst_delay_s = 0\n"
    )
    workers = "shutdown_grace_s = 30\nkill_grace_s = 1"
    config = write_config(tmp_path / "jobd.toml", store=store_toml, workers=workers, jobs=jobs, extra=extra)
    history = await seed_history(config)
    # Socket activation: jobd serves on the socket it is handed instead of binding its own.
    with socket.create_server(("127.0.0.1", 0)) as listener:  # closed here once jobd has its copy
        port = listener.getsockname()[1]
        daemon = daemons(config, listen=listener)
        url = await daemon.start()
    assert url == f"http://127.0.0.1:{port}" and daemon.events("jobd_listening")[0]["url"] == "socket activation"
    async with aiohttp.ClientSession() as http:
        api = Api(http, url)
        # Retention, first pass right after start: old runs and their logs go, the job state stays.
        await wait_for(lambda: daemon.events("retention_sweep"))
        ids = history["runs"]
        for name in ("old_ok", "old_failed"):
            await api.get(f"/api/v1/runs/{ids[name]}", expect=404)
            assert not log_path(history["logs"], ids[name]).exists()
        for name in ("young_failed", "young_ok", "last_of_old"):
            assert (await api.run(ids[name]))["id"] == ids[name]
            assert log_path(history["logs"], ids[name]).exists()
        old = (await api.get("/api/v1/jobs/old"))["job"]
        assert old["consecutive_failures"] == 1 and old["last_fire_at"] == iso_ms(history["state"].last_fire_at)
        assert old["last_run"]["id"] == ids["last_of_old"]
        [sweep] = daemon.events("retention_sweep")
        assert sweep["runs_deleted"] == 2 and sweep["logs_deleted"] == 2 and sweep["keys_deleted"] == 1

        # Alerts: the second failure in a row raises one, the next success says it recovered.
        for _ in range(2):
            await api.finished((await api.trigger("flaky"))["id"])
        alert = await receiver.next()
        assert alert["kind"] == "failure" and alert["consecutive_failures"] == 2 and "not yet" in alert["error"]
        assert daemon.events("job_alert")[0]["level"] == "error"
        flag.touch()
        healed = await api.finished((await api.trigger("flaky"))["id"])
        recovery = await receiver.next()
        assert recovery["kind"] == "recovery" and recovery["run_id"] == healed["id"]

        slow = await api.trigger("slow")
        deaf = await api.trigger("deaf")
        await api.until(slow["id"], lambda r: "started" in r["log_tail"])
        await api.until(deaf["id"], lambda r: r["message"] is not None)
        stream = await api.stream(f"/api/v1/runs/{slow['id']}/events")

        if backend == "sqlite":  # nodes of a cluster share their database: that is the point of one
            await second_jobd_refused(tmp_path, store_toml, workers, jobs, daemon)

        # SIGHUP with a good file: job changes apply; the running run and its stream carry on.
        config.write_text(
            config.read_text().replace("[jobs.slow]\n", '[jobs.slow]\ndescription = "edited"\n')
            + '[jobs.added]\ncommand = ["true"]\n'
        )
        daemon.signal(signal.SIGHUP)
        await wait_for(lambda: daemon.events("config_reloaded"))
        assert (await api.get("/api/v1/jobs/slow"))["job"]["description"] == "edited"
        assert (await api.finished((await api.trigger("added"))["id"]))["status"] == "COMPLETED"
        assert (await api.run(slow["id"]))["status"] == "PROCESSING"
        # SIGHUP with a bad file: refused and logged; the config in force keeps running.
        good = config.read_text()
        config.write_text(good + '[jobs.broken]\ncommand = ["true"]\nschedule = "61 * * * *"\n')
        daemon.signal(signal.SIGHUP)
        [refused] = await wait_for(lambda: daemon.events("reload_refused"))
        assert refused["level"] == "error" and refused["error"].startswith("jobs.broken.schedule: ")
        await api.get("/api/v1/jobs/broken", expect=404)
        assert (await api.finished((await api.trigger("added"))["id"]))["status"] == "COMPLETED"
        assert len(daemon.events("config_reloaded")) == 1

        # A second SIGTERM skips the 30 s grace. The handler that ignores its cancellation is
        # abandoned and recorded; the process ends at the deadline even though that task never does.
        started = asyncio.get_running_loop().time()
        daemon.signal(signal.SIGTERM)
        await wait_for(lambda: daemon.events("jobd_draining"))
        daemon.signal(signal.SIGHUP)  # too late for a reload
        await wait_for(lambda: daemon.events("reload_ignored"))
        daemon.signal(signal.SIGTERM)
        rest = await stream.rest(timeout=20)
        if backend == "sqlite":
            # A cluster node's streams hear of the interrupted run's end from the events table; in
            # the second signal's short slack that read may come too late (docs/cluster.md says so).
            assert [m.data["status"] for m in rest if m.type == "status_update"][-1] == "FAILED"
        assert await daemon.wait() == 0
        took = asyncio.get_running_loop().time() - started
    assert took < 15, took  # well before the grace would have ended
    assert daemon.events("second_stop_signal")
    [deadline] = daemon.events("shutdown_deadline_exceeded")
    assert deadline["store_closed"] is True
    no_tracebacks(daemon)
    runs = stored_runs(config)
    assert runs[slow["id"]]["error"] == "interrupted: jobd stopped while the run was in progress"
    assert runs[deaf["id"]]["error"] == "interrupted: jobd stopped while the run was in progress"
    assert runs[deaf["id"]]["log_tail"].splitlines()[-1] == "the handler ignored its cancellation and was left behind"
    for run in (slow, deaf):
        [retry] = retries_of(runs, run["id"])
        assert retry["status"] == "PENDING" and retry["triggered_by"] == "retry"


# -- kill -9 in the middle of a load --------------------------------------------------------------------


async def test_sigkill_mid_load_loses_nothing(tmp_path: Path, daemons: Any, store_toml: str):
    config = write_config(
        tmp_path / "jobd.toml",
        store=store_toml,
        workers="concurrency = 8\nshutdown_grace_s = 2\nkill_grace_s = 0.5",
        jobs="""
[jobs.load_cmd]
shell = "sleep 0.2"
overlap = "allow"
max_concurrency = 8
[jobs.load_py]
handler = "life_jobs:brief"
overlap = "allow"
max_concurrency = 8
[jobs.ordered]
handler = "life_jobs:brief"
overlap = "queue"
""",
    )
    first = daemons(config)
    url = await first.start()
    accepted: set[int] = set()
    async with aiohttp.ClientSession() as http:
        api = Api(http, url)
        for job, count, seconds in (("load_cmd", 24, 0.2), ("load_py", 24, 0.2), ("ordered", 20, 0.02)):
            batch = await api.trigger(job, runs=[{"params": {"seconds": seconds}}] * count)
            accepted.update(run["id"] for run in batch["runs"])

        async def trickle() -> None:  # single triggers, 20 a second, arriving until the daemon dies
            while True:
                try:
                    accepted.add((await api.trigger("load_py", {"seconds": 0.05}))["id"])
                except aiohttp.ClientError:
                    return
                await asyncio.sleep(0.05)

        sender = asyncio.create_task(trickle())

        async def mid_load() -> bool:
            queue = await api.get("/api/v1/queue")
            return queue["counts"]["COMPLETED"] >= 16 and queue["processing"] >= 4

        await wait_for(mid_load, timeout=30, interval=0.02)
        await first.kill()
        await asyncio.wait_for(sender, 10)

    left = stored_runs(config)
    statuses = [run["status"] for run in left.values()]
    assert statuses.count("PROCESSING") >= 1 and statuses.count("PENDING") >= 1, statuses
    assert accepted <= set(left)  # every 202 was committed

    second = daemons(config)
    url = await second.start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, url)

        async def idle() -> bool:
            queue = await api.get("/api/v1/queue")
            return queue["pending"] == 0 and queue["processing"] == 0

        await wait_for(idle, timeout=45, interval=0.05)
        assert await second.stop() == 0
    no_tracebacks(second)

    runs = stored_runs(config)
    assert accepted <= set(runs)
    assert {run["status"] for run in runs.values()} <= TERMINAL
    interrupted = [run for run in runs.values() if run["status"] == "FAILED"]
    assert len(interrupted) == statuses.count("PROCESSING")
    for run in interrupted:
        assert run["error"] == "interrupted: jobd stopped while the run was in progress (found at start)"
        [retry] = retries_of(runs, run["id"])
        assert retry["triggered_by"] == "retry" and retry["attempt"] == run["attempt"] + 1
        assert retry["status"] == "COMPLETED"
    assert all(run["status"] == "COMPLETED" for run in runs.values() if run not in interrupted)
    # The queue job's runs kept their order across the crash.
    ordered = sorted(
        (run for run in runs.values() if run["job"] == "ordered" and run["retry_of"] is None), key=lambda run: run["id"]
    )
    starts = [run["started_at"] for run in ordered]
    assert starts == sorted(starts)


def alive(pid: int) -> bool:
    """Running and not a zombie (a leftover's parent is init, which reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


async def test_sigkill_leftovers_are_stopped_before_the_retry(tmp_path: Path, daemons: Any, store_toml: str):
    """A killed daemon's command (and its child) lives on; the next start stops it, SIGKILL for one
    that ignores SIGTERM, before the run's retry starts, so the two never run side by side."""
    pidfile = tmp_path / "pids"
    config = write_config(
        tmp_path / "jobd.toml",
        store=store_toml,
        workers="concurrency = 2\nkill_grace_s = 0.5",
        jobs=f"""
[jobs.stubborn]
shell = '''
if [ "$JOBD_ATTEMPT" = 1 ]; then
  trap '' TERM
  sleep 300 &
  echo $$ $! > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}
  wait
fi
'''
""",
    )
    pids: list[int] = []
    try:
        first = daemons(config)
        url = await first.start()
        async with aiohttp.ClientSession() as http:
            run = await Api(http, url).trigger("stubborn")
            pids = [int(pid) for pid in (await wait_for(pidfile.exists) and pidfile.read_text().split())]
        await first.kill()
        assert all(alive(pid) for pid in pids)  # outliving the daemon, ignoring SIGTERM

        second = daemons(config)
        url = await second.start()
        [stopped] = second.events("leftover_processes_stopped")
        assert sorted(stopped["pids"]) == sorted(pids) and sorted(stopped["killed"]) == sorted(pids)
        async with aiohttp.ClientSession() as http:
            api = Api(http, url)
            [retry] = [r for r in (await api.get("/api/v1/runs?job=stubborn"))["runs"] if r["retry_of"] == run["id"]]
            assert (await api.finished(retry["id"]))["status"] == "COMPLETED"
        await wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10)
        assert await second.stop() == 0
        no_tracebacks(second)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
