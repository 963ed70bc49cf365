"""Reading a lab process's JSON lines from its stdout pipe, with a timeout.

`select` on a pipe cannot see bytes a file object has already buffered: a process that prints
two lines at once would leave the second unseen, and a wait for it would time out. So the
pipe's descriptor is read directly and what follows a line is kept for the next call.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import weakref
from pathlib import Path
from typing import Any

# bytes read past a line, per process (weak: forgotten with the Popen object)
_pending: weakref.WeakKeyDictionary[subprocess.Popen, bytes] = weakref.WeakKeyDictionary()


def next_json(proc: subprocess.Popen, timeout: float, log: Path | None = None) -> Any:
    """The next line `proc` prints, decoded as JSON. RuntimeError if it exits first;
    TimeoutError after `timeout` seconds, carrying the tail of its `log` file if given."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = _pending.pop(proc, b"")
    while b"\n" not in buf and time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.2)
        chunk = os.read(fd, 65536) if readable else None
        if chunk == b"" or (not chunk and proc.poll() is not None):
            _pending[proc] = buf
            try:
                status: int | None = proc.wait(1)  # end of output comes just before the exit
            except subprocess.TimeoutExpired:
                status = None
            raise RuntimeError(f"process {proc.pid} exited with {status}" if status is not None
                               else f"process {proc.pid} closed its output")
        buf += chunk or b""
    if b"\n" in buf:
        line, rest = buf.split(b"\n", 1)
        _pending[proc] = rest
        return json.loads(line)
    _pending[proc] = buf
    tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    raise TimeoutError(f"process {proc.pid} printed no line in {timeout:g} s"
                       + (f"; its log ends:\n{tail}" if tail else ""))


def rest_of_output(proc: subprocess.Popen) -> str:
    """Everything `proc` printed that `next_json` has not returned (waits for end of file)."""
    assert proc.stdout is not None
    out = _pending.pop(proc, b"")
    while chunk := os.read(proc.stdout.fileno(), 65536):
        out += chunk
    return out.decode(errors="replace")
