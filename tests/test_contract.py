"""The served OpenAPI document tried with schemathesis against a real `jobd serve` with tokens:
every check, a fixed seed and a bounded number of examples per operation, and no failure."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest
from process import DaemonProcess

ADMIN = "contract-admin-token"
CONFIG = f"""
[server]
host = "127.0.0.1"
port = 0

[store]
path = "state/jobd.db"

[workers]
shutdown_grace_s = 1
kill_grace_s = 0.5

[auth]
tokens = [{{ name = "admin", token = "{ADMIN}", scope = "admin" }}]

[jobs.noop]
command = ["true"]
"""
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
HOOKS = Path(__file__).with_name("contract_hooks.py")
# The firehose never ends: two events (connected, then a state or the summary) are enough to check.
SETTINGS = f"""
hooks = "{HOOKS}"
max-stream-events = 2
"""
EXAMPLES = 15
SEED = 20261207


@pytest.mark.timeout(300)
@pytest.mark.skipif(not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None, reason="pip schemathesis")
async def test_schemathesis_finds_no_failure(tmp_path):
    config = tmp_path / "jobd.toml"
    config.write_text(CONFIG)
    daemon = DaemonProcess(config)
    try:
        url = await daemon.start()
        settings = tmp_path / "schemathesis.toml"
        settings.write_text(SETTINGS)
        command = [
            str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis",
            "--config-file",
            str(settings),
            "run",
            f"{url}/api/v1/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {ADMIN}",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            str(SEED),
            "--request-timeout",
            "5",
            "--no-color",
            "--generation-database",
            "none",
        ]
        run = await asyncio.create_subprocess_exec(
            *command, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(run.communicate(), timeout=280)
        report = output.decode(errors="replace")
        print(report[-3000:])
        assert run.returncode == 0, report[-6000:]
        assert daemon.proc is not None and daemon.proc.returncode is None, "the daemon did not survive the run"
    finally:
        await daemon.cleanup()
