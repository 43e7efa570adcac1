"""A run's log: where its file lives, and `RunLog`, the file plus an in-memory tail of its last lines.

The worker pool writes it as the handler reports lines; the API reads the file (or the tail of a run
in progress) and retention deletes old files.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import IO


def log_path(logs_dir: Path, run_id: int) -> Path:
    """Where a run's full log lives; a folder per thousand runs keeps directories small."""
    return Path(log_file(str(logs_dir), run_id))


def log_file(logs_dir: str, run_id: int) -> str:
    """log_path() as a string, for every run: a Path costs more than the rest of a no-op run's start."""
    return f"{logs_dir}{os.sep}{run_id // 1000}{os.sep}{run_id}.log"


class RunLog:
    """A run's log file plus an in-memory tail of its last lines.

    The file is created on the first line, so runs that print nothing leave no file. After
    `max_bytes` one "... log truncated" line is written and the file gets no more lines; the
    tail keeps following the output. stderr lines carry a "[stderr] " prefix.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int, tail_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.tail_bytes = tail_bytes
        self.bytes_written = 0
        self.truncated = False
        self.write_error: OSError | None = None  # set when the file could not be written
        self._file: IO[bytes] | None = None
        self._closed = False
        self._tail: collections.deque[tuple[str, int]] = collections.deque()  # (text, UTF-8 size)
        self._tail_size = 0

    def write(self, stream: str, line: str) -> None:
        text = f"[stderr] {line}\n" if stream == "stderr" else f"{line}\n"
        data = text.encode("utf-8", errors="replace")
        self._add_to_tail(text, len(data))
        if self.truncated or self._closed or self.write_error is not None:
            return
        if self.bytes_written + len(data) > self.max_bytes:
            self.truncated = True
            data = f"... log truncated at {self.max_bytes} bytes\n".encode()
        try:
            if self._file is None:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                # Unbuffered: the API and `tail -f` see each line as soon as the job prints it.
                self._file = open(self.path, "ab", buffering=0)
            self._file.write(data)
        except OSError as exc:
            self.write_error = exc
            return
        if not self.truncated:
            self.bytes_written += len(data)

    def tail(self) -> str:
        """The last whole lines of output, at most `tail_bytes` bytes of UTF-8."""
        return "".join(text for text, _ in self._tail)

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                self.write_error = self.write_error or exc

    def _add_to_tail(self, text: str, size: int) -> None:
        if size > self.tail_bytes:
            # One line longer than the whole tail: keep its end.
            text = text.encode("utf-8", errors="replace")[-self.tail_bytes :].decode("utf-8", errors="ignore")
            size = len(text.encode("utf-8"))
            self._tail.clear()
            self._tail_size = 0
        self._tail.append((text, size))
        self._tail_size += size
        while self._tail_size > self.tail_bytes:
            self._tail_size -= self._tail.popleft()[1]
