"""Driver for scripts/bench-ddp.sh: runs one training command, and reports its questions/s and
the time from its start to the first optimizer step (the first line of metrics.jsonl for
medbert; the Trainer's first log line for the reference).

usage: ddp_bench.py LABEL OUT_DIR -- CMD [ARGS...]
"""
import json
import os
import subprocess
import sys
import time


def main():
    label, out_dir, sep, *cmd = sys.argv[1:]
    assert sep == "--", __doc__
    metrics = os.path.join(out_dir, "metrics.jsonl")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = None
    while proc.poll() is None and first is None:
        if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            first = time.perf_counter() - start
        time.sleep(0.01)
    output, _ = proc.communicate()
    assert proc.returncode == 0, f"{label} failed ({proc.returncode}): {' '.join(cmd)}"
    summary = os.path.join(out_dir, "summary.json")
    exposed = None
    if os.path.exists(summary):
        s = json.load(open(summary))
        qps, exposed = s["train_questions_per_second"], s.get("ddp_exposed_ms_per_step")
    else:
        qps = json.loads(output.strip().splitlines()[-1])["questions_per_second"]
    print(json.dumps({"label": label, "questions_per_second": qps, "first_step_seconds": first,
                      "exposed_ms_per_step": exposed}))


if __name__ == "__main__":
    main()
