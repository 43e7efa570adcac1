"""jobd.runner.protocol and pipes: a command's stdout protocol lines and its line reading."""

from __future__ import annotations

import sys

import pytest

from jobd.config import JobConfig
from jobd.runner import MAX_LINE_BYTES, Outcome
from tests.runner_helpers import SCRIPTS, run_job, shell


async def test_protocol_lines_go_to_the_reporter() -> None:
    outcome, rec = await run_job(JobConfig(name="t", command=(str(SCRIPTS / "protocol.sh"),)))

    assert outcome == Outcome(exit_code=0, result=["last", 1], error=None, timed_out=False)
    assert rec.of("progress") == [
        (10.0, None),
        (42.5, "halfway there"),
        (50.0, None),
        (100.0, None),
        (0.0, "below zero"),
    ]
    assert rec.of("counts") == [{"total": 50, "success": 46, "failed": 2, "skipped": 2}, {"success": 47}]
    assert rec.of("result") == [{"rows": 3}, ["last", 1]]
    assert rec.lines("stdout") == ["plain line", ""]
    assert rec.lines("stderr") == ["::progress::99 on stderr"]


@pytest.mark.parametrize(
    "line",
    [
        "::progress::",
        "::progress::abc",
        "::progress::nan",
        "::progress::12abc message",
        "::counts::",
        "::counts::total=-1",
        "::counts::total=1.5",
        "::counts::bogus=1",
        "::counts::total=1 success",
        "::counts::success=\u00b2",
        "::result::",
        "::result::{not json",
        "::result::NaN",
        "::result::1e999",
        '::result::{"x": -1e400}',
        "::unknown::1",
        ":: progress::1",
    ],
)
async def test_malformed_protocol_lines_are_logged(line: str) -> None:
    outcome, rec = await run_job(shell('printf "%s\\n" "$LINE"', env={"LINE": line}))

    assert outcome.error is None
    assert rec.lines("stdout") == [line]
    assert rec.of("progress") == rec.of("counts") == rec.of("result") == []
    assert outcome.result is None


async def test_long_lines_are_split_into_bounded_pieces() -> None:
    size = 2 * MAX_LINE_BYTES + 1000
    outcome, rec = await run_job(shell(f"head -c {size} /dev/zero | tr '\\0' a; echo; echo after"))

    pieces = rec.lines("stdout")
    assert outcome.error is None
    assert pieces[-1] == "after"
    assert all(len(piece) <= MAX_LINE_BYTES for piece in pieces)
    assert "".join(pieces[:-1]) == "a" * size


async def test_long_lines_are_split_between_characters() -> None:
    # A piece ends where a character ends, so a long line of UTF-8 text is kept as it was written.
    text = "a" + "é" * MAX_LINE_BYTES
    tail = "€" * (MAX_LINE_BYTES // 2)
    write = f"import sys; sys.stdout.write('a' + 'é' * {MAX_LINE_BYTES} + '\\n' + '€' * {MAX_LINE_BYTES // 2})"
    outcome, rec = await run_job(JobConfig(name="t", command=(sys.executable, "-c", write)))

    pieces = rec.lines("stdout")
    assert outcome.error is None
    assert "\ufffd" not in "".join(pieces)
    assert all(len(piece.encode()) <= MAX_LINE_BYTES + 3 for piece in pieces)  # a character carried over at most
    assert "".join(pieces) == text + tail


async def test_last_line_without_newline_is_kept() -> None:
    outcome, rec = await run_job(shell("printf 'no newline'; printf 'err' >&2"))

    assert outcome.error is None
    assert rec.lines("stdout") == ["no newline"]
    assert rec.lines("stderr") == ["err"]
