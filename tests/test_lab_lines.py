"""lab/lines.py: JSON lines from a child's stdout pipe, with timeouts, on real processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshcache.lab.lines import next_json, rest_of_output


def child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_two_lines_printed_at_once_are_both_seen():
    p = child("import sys, time; sys.stdout.write('{\"a\": 1}\\n{\"b\": 2}\\n'); sys.stdout.flush();"
              " time.sleep(30)")
    try:
        assert next_json(p, 10) == {"a": 1}
        assert next_json(p, 1) == {"b": 2}  # already read from the pipe: select would not see it
    finally:
        p.kill()
        p.wait()


def test_a_silent_child_times_out_with_its_log_tail(tmp_path):
    log = tmp_path / "node.log"
    log.write_text("first\nlast words\n")
    p = child("import time; print('{}', flush=True); time.sleep(30)")
    try:
        assert next_json(p, 10) == {}
        with pytest.raises(TimeoutError, match="last words"):
            next_json(p, 0.5, log)
    finally:
        p.kill()
        p.wait()


def test_a_child_that_exits_is_an_error_and_its_rest_is_kept():
    p = child("print('{\"x\": 1}'); print('partial', end='')")
    assert next_json(p, 10) == {"x": 1}
    with pytest.raises(RuntimeError, match="exited with 0"):
        next_json(p, 10)
    assert rest_of_output(p) == "partial"
