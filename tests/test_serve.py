"""`jobd serve` as a real process, driven over HTTP as curl would."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys

import aiohttp
import pytest
from conftest import wait_for
from process import DaemonProcess

from jobd.client import JobdClient
from jobd.server import raise_open_files_limit


def write_config(tmp_path, jobs: str, extra: str = "", server: str = "") -> object:
    path = tmp_path / "jobd.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\n{server}\n[store]\npath = "state/jobd.db"\n'
        f"[workers]\nshutdown_grace_s = 2\nkill_grace_s = 0.5\n{extra}\n{jobs}"
    )
    return path


@pytest.fixture
async def daemons():
    started: list[DaemonProcess] = []

    def make(path, **kwargs):
        process = DaemonProcess(path, **kwargs)
        started.append(process)
        return process

    yield make
    for process in started:
        await process.cleanup()


async def test_serve_trigger_get_list_cancel_like_curl(tmp_path, daemons):
    config = write_config(
        tmp_path,
        '[jobs.hello]\nshell = "echo hello; echo ::progress::50 half"\n[jobs.slow]\ncommand = ["sleep", "30"]\n',
    )
    daemon = daemons(config)
    url = await daemon.start()
    assert daemon.events("jobd_listening")[0]["url"] == url  # the port picked for port = 0, not ":0"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/api/v1/jobs/hello/trigger",
            json={"params": {"who": "world"}},
            headers={"X-Request-ID": "deploy-42.a"},
        ) as response:
            assert response.status == 202 and response.headers["X-Request-ID"] == "deploy-42.a"
            run = (await response.json())["run"]
        async with JobdClient(url) as client:
            async with client.session.get(f"{url}/api/v1/runs/{run['id']}") as response:
                assert response.status == 200
            slow = await client.trigger("slow")
            cancelled = await client.cancel(slow["id"])
            assert cancelled["status"] == "CANCELLED"
            page = await client.runs()
            assert {r["id"] for r in page["runs"]} == {run["id"], slow["id"]}
    assert await daemon.stop() == 0
    assert daemon.events("jobd_stopped")
    # JSON log lines: the access log carries the caller's request id; a run's lines carry run_id and job.
    [access] = [line for line in daemon.events("request") if line.get("request_id") == "deploy-42.a"]
    assert (access["method"], access["path"], access["status"]) == ("POST", "/api/v1/jobs/hello/trigger", 202)
    finished = {line["run_id"]: line for line in daemon.events("run_finished")}
    assert finished[run["id"]]["job"] == "hello" and finished[run["id"]]["status"] == "COMPLETED"
    assert finished[slow["id"]]["job"] == "slow" and finished[slow["id"]]["status"] == "CANCELLED"


def test_logs_are_readable_lines_on_a_terminal_and_json_otherwise():
    code = """
import io, json
from jobd.logs import configure_logging
class Terminal(io.StringIO):
    def isatty(self): return True
for stream in (io.StringIO(), Terminal()):
    configure_logging(stream=stream).info("run_finished", run_id=7, job="hello")
    print(repr(stream.getvalue()))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    piped, terminal = (ast.literal_eval(line) for line in result.stdout.splitlines())
    record = json.loads(piped)
    assert (record["event"], record["run_id"], record["job"], record["level"]) == ("run_finished", 7, "hello", "info")
    assert not terminal.startswith("{") and "run_finished" in terminal and "run_id=7" in terminal


async def test_what_aiohttp_logs_is_json_lines_too(tmp_path, daemons):
    # Bytes that are not a request jobd can serve are refused by aiohttp's parser, which logs them
    # through the standard logging module: those lines are JSON like the rest, not bare tracebacks.
    daemon = daemons(write_config(tmp_path, '[jobs.hello]\nshell = "echo hi"\n'))
    url = await daemon.start()
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/v1/jobs/hello/trigger HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert b" 400 " in await reader.readline()
    writer.close()
    await wait_for(lambda: any(line.get("logger", "").startswith("aiohttp") for line in daemon.lines))
    assert await daemon.stop() == 0
    assert [line for line in daemon.lines if line["event"] == "raw"] == []
    [refused] = [line for line in daemon.lines if line.get("logger", "").startswith("aiohttp")]
    assert refused["level"] in ("error", "warning") and "timestamp" in refused
    assert "ContentEncodingError" in refused.get("exception", "")


async def test_pending_runs_survive_a_restart(tmp_path, daemons):
    config = write_config(tmp_path, '[jobs.wait]\ncommand = ["sleep", "30"]\noverlap = "queue"\n', extra="")
    first = daemons(config)
    url = await first.start()
    async with JobdClient(url) as client:
        runs = [await client.trigger("wait") for _ in range(3)]
    # SIGKILL: the first run is PROCESSING, the other two PENDING in the store.
    await first.kill()
    second = daemons(config)
    url = await second.start()
    async with JobdClient(url) as client:
        states = {r["id"]: r for r in (await client.runs())["runs"]}
        assert states[runs[0]["id"]]["status"] == "FAILED"
        assert "interrupted" in states[runs[0]["id"]]["error"]
        replacement = next(r for r in states.values() if r["retry_of"] == runs[0]["id"])
        assert replacement["triggered_by"] == "retry"
        # The two PENDING runs kept their order and are still there, waiting behind one another.
        assert [states[r["id"]]["status"] for r in runs[1:]] in (["PROCESSING", "PENDING"], ["PENDING", "PENDING"])
        for run_id in [r["id"] for r in runs[1:]] + [replacement["id"]]:
            await client.cancel(run_id)
    assert await second.stop() == 0


async def test_the_listening_url_of_an_ipv6_host_has_brackets(tmp_path, daemons):
    config = write_config(tmp_path, "")
    config.write_text(config.read_text().replace('host = "127.0.0.1"', 'host = "::1"'))
    daemon = daemons(config)
    await daemon.start()
    [listening] = daemon.events("jobd_listening")
    port = listening["addresses"][0][1]
    assert listening["url"] == f"http://[::1]:{port}"
    async with JobdClient(listening["url"]) as client:
        assert (await client.queue())["pending"] == 0
    assert await daemon.stop() == 0


def test_params_that_are_not_standard_json_are_refused_by_the_cli(tmp_path):
    # NaN and 1e999 parse in Python, but no server (and no JSON reader) takes them.
    for args, stdin in ((["-p", "x:=NaN"], None), (["-p", "x:=1e999"], None), (["--stdin"], '{"x": Infinity}\n')):
        argv = [sys.executable, "-m", "jobd", "trigger", "hello", "--url", "http://127.0.0.1:9", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, input=stdin)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (args, result.stderr)


def test_cli_without_a_daemon_says_so_in_one_line(tmp_path):
    for url, code, text in (
        ("http://127.0.0.1:9", 3, "cannot reach"),
        ("garbage", 2, "is not an http"),
        ("http://", 2, "is not an http"),
        ("http://[bad", 2, "is not an http"),
        ("http://127.0.0.1:99999", 2, "is not an http"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "jobd", "runs", "--url", url], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == code and text in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1


async def test_cli_against_a_real_daemon(tmp_path, daemons):
    config = write_config(
        tmp_path,
        '[jobs.hello]\nshell = "echo hi"\noverlap = "allow"\n'
        '[jobs.slow]\ncommand = ["sleep", "30"]\noverlap = "queue"\n',
        extra='[auth]\ntokens = [{ name = "ci", token = "ci-token-123", scope = "trigger" },\n'
        '          { name = "ops", token = "ops-token-123", scope = "admin" }]\n',
        server="max_batch_runs = 3",
    )
    daemon = daemons(config)
    url = await daemon.start()

    def cli(*args, env=None, stdout=subprocess.PIPE, stdin=None):
        # The address and the token come from the environment, as in a script.
        env = {**os.environ, "JOBD_URL": url, "JOBD_TOKEN": "ci-token-123", **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "jobd", *args],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            env=env,
            input=stdin,
        )

    seen_requests = 0

    async def batch_requests(count: int) -> list[int]:
        """The statuses of the next `count` trigger requests of hello, from the daemon's access log."""
        nonlocal seen_requests

        def logged() -> list[dict]:
            return [r for r in daemon.events("request") if r["path"] == "/api/v1/jobs/hello/trigger"]

        await wait_for(lambda: len(logged()) >= seen_requests + count)
        new = logged()[seen_requests:]
        seen_requests += len(new)
        return [r["status"] for r in new]

    out = cli("trigger", "hello", "--param", "a=1", "--param", "n:=2", "--json")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)["run"]
    assert run["params"] == {"a": "1", "n": 2} and run["triggered_by"] == "manual"
    table = cli("runs", "--job", "hello")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["ID", "JOB", "STATUS"]
    assert table.stdout.splitlines()[1].split()[:2] == [str(run["id"]), "hello"]
    page = json.loads(cli("runs", "--job", "hello", "--json").stdout)
    assert [r["id"] for r in page["runs"]] == [run["id"]] and page["pagination"]["total"] == 1
    async with JobdClient(url, token="ci-token-123") as client:

        async def pending(count: int) -> bool:
            return (await client.queue())["pending"] == count

        await wait_for(lambda: pending(0))
        status = cli("status")
        assert status.returncode == 0 and "hello" in status.stdout, status.stderr
        assert re.fullmatch(r"workers 0/4 busy, none pending", status.stdout.splitlines()[0])
        snapshot = json.loads(cli("status", "--json").stdout)
        assert set(snapshot) == {"queue", "jobs"} and snapshot["jobs"][0]["name"] == "hello"
        assert (snapshot["queue"]["pending"], snapshot["queue"]["oldest_pending_age_s"]) == (0, None)
        # The whole log as it is, or in JSON for scripts.
        assert (await client.wait(run["id"]))["status"] == "COMPLETED"
        log = cli("log", str(run["id"]))
        assert log.returncode == 0 and "hi\n" in log.stdout, log.stderr
        assert json.loads(cli("log", str(run["id"]), "--json").stdout) == {"run_id": run["id"], "log": log.stdout}
        # One run, readable: JSON values as JSON, nothing as "-", then the log tail.
        shown = cli("show", str(run["id"]))
        assert shown.returncode == 0, shown.stderr
        fields = dict(line.strip().split(": ", 1) for line in shown.stdout.split("\n\n")[0].splitlines())
        assert fields["params"] == '{"a": "1", "n": 2}' and fields["status"] == "COMPLETED"
        assert fields["counts"] == '{"total": null, "success": 0, "failed": 0, "skipped": 0}'
        assert (fields["error"], fields["retry_of"], fields["exit_code"]) == ("-", "-", "0")
        assert (fields["parent_run_id"], fields["children"]) == ("-", "[]")  # not part of a chain
        assert shown.stdout.endswith("\nhi\n")
        assert json.loads(cli("show", str(run["id"]), "--json").stdout)["run"]["id"] == run["id"]
        again = cli("retry", str(run["id"]), "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["run"]["retry_of"] == run["id"]
        # Pause and resume need an admin token; a trigger token gets the 403 on stderr.
        assert cli("pause", "hello").stderr.startswith("jobd: 403 ")
        admin = {"JOBD_TOKEN": "ops-token-123"}
        assert cli("pause", "hello", env=admin).stdout == "hello: paused\n"
        assert json.loads(cli("resume", "hello", "--json", env=admin).stdout)["job"]["paused"] is False
        await wait_for(lambda: pending(0))
        # One slow run going and one waiting behind it (overlap = "queue").
        slow = [json.loads(cli("trigger", "slow", "--json").stdout)["run"]["id"] for _ in range(2)]
        await wait_for(lambda: pending(1))
        busy = cli("status").stdout.splitlines()[0]
        assert re.fullmatch(r"workers 1/4 busy, 1 pending, oldest pending \d+(\.\d+)?s", busy), busy
        for run_id in reversed(slow):
            assert cli("cancel", str(run_id)).returncode == 0
    await batch_requests(1)  # the trigger above
    # 10 lines against server.max_batch_runs = 3: the first request is refused whole and names the
    # limit; the runs then go 3 to a request, in order.
    lines = "".join(json.dumps({"n": n}) + "\n" for n in range(10))
    out = cli("trigger", "hello", "--stdin", "--json", stdin=lines)
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)["runs"]
    assert [r["params"] for r in runs] == [{"n": n} for n in range(10)]
    assert len({r["id"] for r in runs}) == 10
    assert await batch_requests(5) == [400, 202, 202, 202, 202]
    out = cli("trigger", "hello", "--stdin", "--batch-size", "2", stdin=lines)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 11, out.stderr  # a header and 10 rows
    assert await batch_requests(5) == [202] * 5
    for bad, message in (
        (["--batch-size", "0"], "jobd: --batch-size must be at least 1\n"),
        ([], "jobd: --stdin line 2 is not a JSON object of params\n"),
        (["-p", "a=1"], "jobd: --param cannot be used with --stdin: each line is a run's params\n"),
        (["--idempotency-key", "k"], "jobd: --idempotency-key is for a single run; it cannot be used with --stdin\n"),
    ):
        refused = cli("trigger", "hello", "--stdin", *bad, stdin='{"n": 1}\n[1]\n')
        assert (refused.returncode, refused.stderr) == (2, message)
    missing = cli("trigger", "nope")
    assert missing.returncode == 1 and "404" in missing.stderr
    assert "no job named 'a/b'" in cli("trigger", "a/b").stderr  # one path segment, whatever is typed
    refused = cli("runs", env={"JOBD_TOKEN": "wrong-token-1"})
    assert refused.returncode == 1 and refused.stderr.startswith("jobd: 401 ")
    flag = cli("runs", "--token", "ci-token-123", env={"JOBD_TOKEN": ""})
    assert flag.returncode == 0, flag.stderr
    bad_param = cli("trigger", "hello", "-p", "x:={")
    assert bad_param.returncode == 2 and bad_param.stderr.startswith("jobd: --param 'x:={': ")
    # A reader that went away (`jobd runs --json | head -1`): no message, no traceback.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = cli("runs", "--json", stdout=write_end)
    finally:
        os.close(write_end)
    assert closed.returncode == 1 and closed.stderr == ""
    assert await daemon.stop() == 0


async def test_sigterm_is_a_clean_exit(tmp_path, daemons):
    daemon = daemons(write_config(tmp_path, ""))
    await daemon.start()
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait() == 0


def serve_once(path, timeout: float = 30) -> subprocess.CompletedProcess:
    """`jobd serve` that is expected to refuse to start: it must exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "jobd", "serve", "-c", str(path)], capture_output=True, text=True, timeout=timeout
    )


def test_serve_refuses_an_invalid_config_with_one_line(tmp_path):
    for body, key in (
        ('[server]\nhost = "0.0.0.0"\n', "server.host"),
        ('[jobs.a]\ncommand = ["true"]\nschedule = "61 * * * *"\n', "jobs.a.schedule"),
        ('[jobs.a]\ncommand = ["true"]\ntimeout_s = nan\n', "jobs.a.timeout_s"),
    ):
        path = tmp_path / "bad.toml"
        path.write_text(body)
        result = serve_once(path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"jobd: invalid config: {key}: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "state").exists()  # refused before anything was created


def test_serve_refuses_a_store_it_cannot_open_with_one_line(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "jobd.db").write_bytes(b"this is not an SQLite database, it is a text file " * 20)
    result = serve_once(write_config(tmp_path, ""))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("jobd: cannot start: ")
    assert "not a database" in result.stderr and "Traceback" not in result.stderr
    # One SQLite cannot even open: a folder where the file should be.
    (state / "jobd.db").unlink()
    (state / "jobd.db").mkdir()
    result = serve_once(write_config(tmp_path, ""))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("jobd: cannot start: ")
    assert "cannot open the store" in result.stderr and "Traceback" not in result.stderr, result.stderr


async def test_a_start_that_fails_after_the_store_opened_still_exits(tmp_path, daemons):
    config = write_config(tmp_path, '[jobs.a]\ncommand = ["true"]\n')
    daemon = daemons(config)
    await daemon.start()
    assert await daemon.stop() == 0
    # A row jobd cannot read makes loading the runs fail; the store and workers must not keep
    # the process alive after that.
    with sqlite3.connect(tmp_path / "state" / "jobd.db") as db:
        db.execute(
            "INSERT INTO runs (id, job, status, triggered_by, params, created_at) "
            "VALUES (1, 'a', 'PENDING', 'api', '{not json', 0)"
        )
    result = serve_once(config)
    assert result.returncode == 1
    assert "jobd_listening" not in result.stderr


@pytest.mark.parametrize(("address", "refused"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_without_tokens_a_socket_from_systemd_must_be_loopback_too(tmp_path, address, refused):
    # As systemd does it: the socket on fd 3, LISTEN_PID naming the process (exec keeps the pid).
    launcher = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ.update(LISTEN_FDS='1', "
        "LISTEN_PID=str(os.getpid())); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
    )
    config = str(write_config(tmp_path, ""))
    with (
        socket.create_server((address, 0)) as sock,
        subprocess.Popen(
            [sys.executable, "-c", launcher, str(sock.fileno()), "-m", "jobd", "serve", "-c", config],
            pass_fds=(sock.fileno(),),
            stderr=subprocess.PIPE,
            text=True,
        ) as proc,
    ):  # leaving the block waits for it and closes its pipe
        try:
            if refused:
                assert proc.wait(timeout=30) == 2
                [line] = proc.stderr.read().splitlines()
                assert line.startswith("jobd: invalid config: socket activation: '0.0.0.0' is not a loopback")
            else:
                assert any('"jobd_listening"' in line and '"socket activation"' in line for line in proc.stderr)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if not refused else signal.SIGKILL)


async def test_a_log_stream_that_breaks_does_not_break_the_daemon(tmp_path):
    # stderr is a pipe whose reader goes away, as when journald restarts: every log write then fails.
    config = write_config(tmp_path, '[jobs.hello]\nshell = "echo hi"\n')
    with subprocess.Popen(
        [sys.executable, "-m", "jobd", "serve", "-c", str(config), "--log-format", "json"],
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            listening = next(json.loads(line) for line in proc.stderr if '"jobd_listening"' in line)
            proc.stderr.close()
            host, port = listening["addresses"][0]
            async with JobdClient(f"http://{host}:{port}") as client:
                run = await client.trigger("hello")  # an access log line, run lines: all unwritable
                assert (await client.wait(run["id"]))["status"] == "COMPLETED"
                assert (await client.queue())["counts"]["COMPLETED"] == 1
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_serve_raises_its_soft_open_files_limit_as_far_as_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_open_files_limit(512) == (512, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (512, hard)
        assert raise_open_files_limit(100) == (512, hard)  # never lowered
        if hard != resource.RLIM_INFINITY:
            assert raise_open_files_limit(hard + 1000) == (hard, hard)  # never past the hard limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
