"""`make chaos`: run every scenario (full, or --quick) and write docs/reliability.md's figures.

Each scenario prints one JSON object as its last line; this keeps the newest result of each in
docs/reliability.md between the `<!-- chaos:NAME -->` markers, with the command and the date.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(os.path.dirname(HERE), "docs", "reliability.md")
SCENARIOS = ["hostile_peer", "sigkill", "lab_kill", "fuzz", "flood", "origin_outage", "soak",
             "full_disk", "store_scale"]


def record(name: str, command: str, result: dict, seconds: float) -> None:
    """Put the scenario's figures between its markers in docs/reliability.md."""
    with open(DOC) as f:
        doc = f.read()
    today = datetime.date.today().isoformat()
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in result.items())
    block = (f"<!-- chaos:{name} -->\n`{command}` on {today} ({seconds:.0f} s; a 2-core machine "
             f"shared with other jobs, load {os.getloadavg()[0]:.1f}):\n\n| figure | value |\n"
             f"| --- | --- |\n{rows}\n<!-- /chaos:{name} -->")
    pattern = re.compile(rf"<!-- chaos:{name} -->.*?<!-- /chaos:{name} -->", re.S)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: block, doc)
    else:
        doc = doc.rstrip("\n") + f"\n\n{block}\n"
    with open(DOC, "w") as f:
        f.write(doc)


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--quick"]
    quick = "--quick" in sys.argv[1:]
    failed = []
    for name in args or SCENARIOS:
        command = f"python chaos/{name}.py" + (" --quick" if quick else "")
        print(f"== {command}", flush=True)
        t = time.monotonic()
        p = subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py")]
                           + (["--quick"] if quick else []), stdout=subprocess.PIPE, text=True)
        lines = p.stdout.strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            result = {"error": f"exit {p.returncode}, no result"}
        if p.returncode != 0:
            result["exit_code"] = p.returncode
            failed.append(name)
        print(json.dumps(result), flush=True)
        record(name, command, result, time.monotonic() - t)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
