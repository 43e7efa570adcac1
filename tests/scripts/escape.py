"""Starts a process in a new session, out of reach of a process-group kill, that keeps
stdout open; then exits at once."""

import subprocess

child = subprocess.Popen(["sleep", "30"], start_new_session=True)
print("escaped", child.pid, flush=True)
