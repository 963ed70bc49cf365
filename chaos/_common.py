"""Helpers shared by the chaos scenarios: arguments, process memory, the JSON last line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MiB = 1 << 20


def parse(description: str,
          extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """--quick, and the scenario's own options (`extra` adds them)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short version (minutes, not hours)")
    if extra is not None:
        extra(p)
    return p.parse_args()


def emit(result: dict[str, Any]) -> None:
    """Print the result as the last line (one JSON object), rounding floats."""
    out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}
    sys.stdout.flush()
    print(json.dumps(out), flush=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss(pid: int | str = "self", field: str = "VmRSS") -> int:
    """Resident set size of a process in bytes (Linux /proc); field RssAnon: its anonymous
    memory alone (heap), RssFile: mapped files (libraries)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM) of a process in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_daemon(env: dict[str, str]) -> tuple[Any, str]:
    """A meshcached with this environment: (process, "host:port" it listens on)."""
    env = {"MESHCACHE_METRICS_LISTEN": "", **env}  # no fixed port: other daemons may run here
    proc = subprocess.Popen([sys.executable, "-m", "meshcache.daemon"], env=env,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout is not None else ""
    if not line:
        stop(proc)
        raise RuntimeError(f"the daemon did not start (exit {proc.returncode})")
    return proc, json.loads(line)["address"]


def stop(proc: Any) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
