"""Run a command; print its wall time and the peak total RSS of its process tree as JSON.

usage: measure.py LABEL -- CMD [ARGS...]
Polls /proc every 20 ms, summing the RSS of the command and all its descendants. The
command's last line of output is reported as "last_line".
"""
import json
import os
import subprocess
import sys
import tempfile
import time


def tree_rss_kb(root: int) -> int:
    children = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(pid))
        except OSError:
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def main() -> None:
    label, sep, *cmd = sys.argv[1:]
    assert sep == "--", __doc__
    start = time.perf_counter()
    out = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=out)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_kb(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - start
    out.seek(0)
    lines = out.read().decode(errors="replace").strip().splitlines()
    print(json.dumps({"label": label, "seconds": round(wall, 2), "peak_rss_mb": round(peak / 1024, 1),
                      "exit": proc.returncode, "last_line": lines[-1] if lines else ""}))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
