"""`--profile`: sample the daemon with py-spy while a scenario runs, and summarise where it went.

py-spy is not a dependency of jobd: `.venv/bin/pip install py-spy` first. It attaches to the
daemon once it is ready (so start-up is not in the profile; scenario 6's start-up has its own
figure) and writes collapsed stacks ("frame;frame;... count" lines, the input of flamegraph.pl
and speedscope) to bench/results/profiles/<scenario>-<daemon>.txt. `summarize()` turns one into
the lists docs/performance.md quotes: the functions with the most samples on the CPU, on their own
("self") and with what they call ("total").
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

RATE_HZ = 200
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \(\d+\): ")
# The frames under everything (the interpreter, the event loop, the threads): no news in "total".
_PLUMBING = re.compile(
    r"^(<module>|_run_module_as_main|_run_code|main|cmd_serve|run|Runner\.run|"
    r"BaseEventLoop\.(run_forever|run_until_complete|_run_once)|Handle\._run|"
    r"Thread\.(run|_bootstrap|_bootstrap_inner)) "
)


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


async def start(pid: int, output: Path) -> asyncio.subprocess.Process:
    """Sample `pid` until it exits (the collapsed stacks are written then)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(RATE_HZ),
        "--format",
        "raw",
        "--threads",
        "--output",
        str(output),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3", "jobd/"):
        if marker in path:
            path = path[path.index(marker) + len(marker) :]
            break
    return f"{match['name']} ({path.split('/python3.11/')[-1]})"


def summarize(path: Path, top: int = 20) -> str:
    """The `top` functions by self and by total samples, in % of all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        threads[_THREAD.sub("", frames[0])] += count
        names = [_short(frame) for frame in frames[1:]]
        samples += count
        if names:
            own[names[-1]] += count
        for name in set(names):
            if not _PLUMBING.match(name):
                total[name] += count
    if not samples:
        return f"{path}: no samples"

    def block(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"  {100 * n / samples:5.1f}%  {name}" for name, n in counter.most_common(top)]
        return [title, *rows]

    lines = [f"{path.name}: {samples} samples at {RATE_HZ} Hz (on the CPU only)"]
    lines += block("by thread:", threads)
    lines += block("self:", own)
    lines += block("total:", total)
    return "\n".join(lines)
