"""jobd.runlog: a run's log file and its tail."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from jobd.runlog import RunLog


def test_runlog_creates_no_file_for_a_silent_run(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "logs" / "1.log", max_bytes=1024, tail_bytes=1024)
    log.close()

    assert not (tmp_path / "logs").exists()
    assert log.tail() == ""


def test_runlog_writes_plain_lines(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "1.log"
    log = RunLog(path, max_bytes=1024, tail_bytes=1024)
    log.write("stdout", "out")
    log.write("stderr", "err")
    log.write("handler", "héllo")
    log.close()

    expected = "out\n[stderr] err\nhéllo\n"
    assert path.read_text(encoding="utf-8") == expected
    assert log.tail() == expected


def test_runlog_truncates_the_file_but_keeps_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    log = RunLog(path, max_bytes=100, tail_bytes=30)
    for number in range(30):
        log.write("stdout", f"line {number:04d}")  # 10 bytes with the newline
    log.close()

    assert path.read_text() == "".join(f"line {n:04d}\n" for n in range(10)) + "... log truncated at 100 bytes\n"
    assert log.truncated
    assert log.tail() == "line 0027\nline 0028\nline 0029\n"


def test_runlog_tail_keeps_the_end_of_an_oversized_line(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "1.log", max_bytes=10_000, tail_bytes=20)
    log.write("stdout", "short")
    log.write("stdout", "é" * 30 + "END")
    log.close()

    tail = log.tail()
    assert len(tail.encode()) <= 20
    assert tail.endswith("éEND\n")


@given(
    st.lists(st.tuples(st.sampled_from(["stdout", "stderr", "handler"]), st.text(max_size=40)), max_size=40),
    st.integers(min_value=1, max_value=120),
)
def test_runlog_tail_is_the_longest_fitting_suffix_of_whole_lines(
    lines: list[tuple[str, str]], tail_bytes: int
) -> None:
    log = RunLog(Path("/nonexistent/never-written.log"), max_bytes=0, tail_bytes=tail_bytes)
    log.close()  # after close only the tail is kept: no file is touched
    rendered = [(f"[stderr] {line}\n" if stream == "stderr" else f"{line}\n") for stream, line in lines]
    for stream, line in lines:
        log.write(stream, line)

    tail = log.tail()
    size = len(tail.encode("utf-8", errors="replace"))
    assert size <= tail_bytes
    assert "".join(rendered).endswith(tail)
    # Nothing is dropped that would have fitted: at least the longest suffix of whole lines is kept.
    fitting = 0
    for text in reversed(rendered):
        if fitting + len(text.encode("utf-8", errors="replace")) > tail_bytes:
            break
        fitting += len(text.encode("utf-8", errors="replace"))
    assert size >= fitting
    if rendered and not fitting:  # the last line alone is too long: its end is kept
        assert tail.endswith("\n") and size > tail_bytes - 4
