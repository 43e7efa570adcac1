"""`jobd serve` as a real process, driven over HTTP as curl would."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys

import aiohttp
import pytest
from process import DaemonProcess

from jobd.client import JobdClient
from jobd.daemon import raise_open_files_limit


def write_config(tmp_path, jobs: str, extra: str = "") -> object:
    path = tmp_path / "jobd.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\n[store]\npath = "state/jobd.db"\n'
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
    config = write_config(tmp_path, '[jobs.hello]\nshell = "echo hello; echo ::progress::50 half"\n'
                                    '[jobs.slow]\ncommand = ["sleep", "30"]\n')
    daemon = daemons(config)
    url = await daemon.start()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/v1/jobs/hello/trigger", json={"params": {"who": "world"}}) as response:
            assert response.status == 202
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


async def test_pending_runs_survive_a_restart(tmp_path, daemons):
    config = write_config(tmp_path, '[jobs.wait]\ncommand = ["sleep", "30"]\noverlap = "queue"\n',
                          extra="")
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


def test_cli_client_commands_print_tables_and_json(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jobd", "runs", "--url", "http://127.0.0.1:9"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3 and "cannot reach" in result.stderr and "Traceback" not in result.stderr


async def test_cli_against_a_real_daemon(tmp_path, daemons):
    config = write_config(tmp_path, '[jobs.hello]\nshell = "echo hi"\noverlap = "allow"\n')
    daemon = daemons(config)
    url = await daemon.start()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "jobd", *args, "--url", url], capture_output=True, text=True,
                              timeout=30)

    out = cli("trigger", "hello", "--param", "a=1", "--param", "n:=2", "--json")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)["run"]
    assert run["params"] == {"a": "1", "n": 2} and run["triggered_by"] == "manual"
    table = cli("runs", "--job", "hello")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["ID", "JOB", "STATUS"]
    status = cli("status")
    assert status.returncode == 0 and "hello" in status.stdout
    missing = cli("trigger", "nope")
    assert missing.returncode == 1 and "404" in missing.stderr
    assert await daemon.stop() == 0


async def test_sigterm_is_a_clean_exit(tmp_path, daemons):
    daemon = daemons(write_config(tmp_path, ""))
    await daemon.start()
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait() == 0


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
