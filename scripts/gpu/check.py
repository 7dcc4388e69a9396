"""The GPU check: proves medbert's CUDA paths with figures on a machine with torch and
transformers but no Rust toolchain and no network. Run through check.sh (which points the
loader at this python's torch/lib); `--cpu` runs every step at tiny sizes on the CPU.

Steps (each a row of the report): doctor; logits against transformers (fp32, and bf16
autocast); training under bf16 and fp16 with checkpoint reload and predict; DDP over NCCL with
one process and over Gloo with two processes on one GPU; speed against the HF Trainer.
Writes gpu-report.md (and check.json) to $OUT when set, else next to this script.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

KIT = Path(__file__).resolve().parent
BIN = KIT / "bin"


class Sizes:
    """What each step runs on: real sizes on a GPU, tiny ones on the CPU."""

    def __init__(self, cpu: bool):
        self.cpu = cpu
        self.device = "cpu" if cpu else "cuda"
        tiny = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128)
        self.models = {
            # name: (transformers BertConfig overrides, seed)
            "bert-base": ({} if not cpu else dict(tiny, hidden_size=128, intermediate_size=256), 1),
            "minilm": (dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536)
                       if not cpu else tiny, 2),
        }
        self.logit_questions = 16 if cpu else 256
        # Random weights have to learn from scratch: enough epochs over few questions that the
        # training loss must fall (memorisation is enough to show the step works).
        self.train_questions, self.holdout = (96, 32) if cpu else (1536, 512)
        self.train_steps = 60 if cpu else 300
        self.train_batch = 8 if cpu else 32
        self.lr = 3e-3 if cpu else 3e-4
        self.ddp_steps = 4 if cpu else 40
        self.speed_batch, self.speed_steps = (4, 4) if cpu else (32, 150)
        self.precisions = ["fp32"] if cpu else ["bf16", "fp16"]


class Check:
    def __init__(self, sizes: Sizes, work: Path):
        self.sizes, self.work = sizes, work
        self.rows = []  # (step, passed, figures)
        self.facts = {}

    def record(self, step, passed, figures):
        self.rows.append((step, bool(passed), figures))
        print(f"[{'PASS' if passed else 'FAIL'}] {step}: {figures}", flush=True)

    def run(self, args, log, env=None, timeout=240):
        """Runs a command, its output into WORK/log; returns (exit code, output, seconds)."""
        started = time.perf_counter()
        with open(self.work / log, "w") as f:
            proc = subprocess.run([str(a) for a in args], stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, timeout=timeout)
        text = (self.work / log).read_text(errors="replace")
        return proc.returncode, text, time.perf_counter() - started


def medbert(*args):
    return [BIN / "medbert", *args]


def tail(text, lines=8):
    return " / ".join(text.strip().splitlines()[-lines:])


class GpuMemory:
    """Peak device memory in use while a command runs (NVML, polled every 10 ms), minus what
    was in use before: the same measure for ours and the reference."""

    def __init__(self, enabled):
        self.handle = None
        if enabled:
            import pynvml
            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def __enter__(self):
        self.peak = 0
        if self.handle is None:
            return self
        self.base = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used
        self.stop = False

        def poll():
            while not self.stop:
                used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used - self.base
                self.peak = max(self.peak, used)
                time.sleep(0.01)

        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.stop = True
            self.thread.join()

    @property
    def gib(self):
        return self.peak / 2**30


def step_doctor(c: Check):
    code, out, _ = c.run(medbert("doctor"), "doctor.log")
    lines = {l.split(":", 1)[0].strip(): l.split(":", 1)[1].strip() for l in out.splitlines() if ":" in l}
    c.facts["doctor"] = out
    backends = lines.get("c10d backends", "")
    checks = {"exit 0": code == 0, "libtorch 2.11": lines.get("libtorch", "").startswith("2.11"),
              "NCCL compiled": "nccl" in backends}
    if not c.sizes.cpu:
        gpu = lines.get("GPU 0", "")
        checks.update({"CUDA available": lines.get("CUDA", "").startswith("available"),
                       "bf16": "bf16 yes" in gpu, "kernels for this GPU": "kernels present" in gpu})
        figures = f"{lines.get('built for', '?')}; GPU 0: {gpu}; kernels: {lines.get('GPU kernels', '?')}; backends: {backends}"
    else:
        figures = f"{lines.get('built for', '?')}; CUDA: {lines.get('CUDA', '?')}; backends: {backends}"
    failed = [k for k, ok in checks.items() if not ok]
    c.record("a. doctor", not failed, figures + (f"; failed: {', '.join(failed)}" if failed else ""))


def build_models(c: Check):
    """Random BertForMultipleChoice models of each shape, saved by transformers with the kit's
    tokenizer files."""
    import torch
    from transformers import BertConfig, BertForMultipleChoice
    dirs = {}
    for name, (overrides, seed) in c.sizes.models.items():
        torch.manual_seed(seed)
        model = BertForMultipleChoice(BertConfig(**overrides))
        out = c.work / "models" / name
        model.save_pretrained(out)
        for f in (KIT / "tokenizer").iterdir():
            shutil.copy(f, out / f.name)
        dirs[name] = out
    return dirs


def cache_batches(cache: Path, batch: int):
    """The cache's questions as predict batches them: `batch` questions, padded to the longest."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file
    t = load_file(str(cache / "tokens.safetensors"))
    ids, types, offsets = t["input_ids"], t["token_type_ids"], t["offsets"]
    questions = (len(offsets) - 1) // 4
    for start in range(0, questions, batch):
        seqs = range(start * 4, min(questions, start + batch) * 4)
        width = max(offsets[s + 1] - offsets[s] for s in seqs)
        shape = (len(seqs), width)
        x = {k: np.zeros(shape, dtype=np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
        for row, s in enumerate(seqs):
            a, b = offsets[s], offsets[s + 1]
            x["input_ids"][row, : b - a] = ids[a:b]
            x["token_type_ids"][row, : b - a] = types[a:b]
            x["attention_mask"][row, : b - a] = 1
        yield {k: torch.from_numpy(v).view(len(seqs) // 4, 4, width) for k, v in x.items()}


def reference_logits(model_dir: Path, cache: Path, device: str, bf16: bool):
    import torch
    from transformers import BertForMultipleChoice
    model = BertForMultipleChoice.from_pretrained(model_dir).to(device).eval()
    out = []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for x in cache_batches(cache, 32):
            out.append(model(**{k: v.to(device) for k, v in x.items()}).logits.float().cpu())
    return torch.cat(out)


def read_logits(csv: Path):
    import torch
    rows = [l.split(",") for l in csv.read_text().strip().splitlines()[1:]]
    return torch.tensor([[float(v) for v in r[6:10]] for r in rows])


def step_logits(c: Check, models, dev: Path):
    head = c.work / "logits.json"
    head.write_text("".join(dev.read_text().splitlines(keepends=True)[: c.sizes.logit_questions]))
    for name, model in models.items():
        cache = c.work / f"cache-{name}"
        code, out, _ = c.run(medbert("prep", "--input", head, "--output", cache, "--model", model), f"prep-{name}.log")
        if code != 0:
            c.record(f"b. logits {name}", False, f"prep failed: {tail(out)}")
            continue
        ours, theirs = {}, {}
        for precision in ["fp32"] + ([] if c.sizes.cpu else ["bf16"]):
            csv = c.work / f"logits-{name}-{precision}.csv"
            code, out, _ = c.run(medbert("predict", "--model", model, "--test-file", cache, "--output", csv,
                                         "--device", c.sizes.device, "--precision", precision,
                                         "--per-device-eval-batch-size", "32"), f"predict-{name}-{precision}.log")
            if code != 0:
                c.record(f"b. logits {name} {precision}", False, f"predict failed: {tail(out)}")
                return
            ours[precision] = read_logits(csv)
            theirs[precision] = reference_logits(model, cache, c.sizes.device, precision == "bf16")
        fp32 = (ours["fp32"] - theirs["fp32"]).abs().max().item()
        c.record(f"b. logits {name} fp32", fp32 < 1e-4,
                 f"{len(ours['fp32'])} questions, max abs(ours - transformers) = {fp32:.2e} (limit 1e-4)")
        if "bf16" in ours:
            # bf16 keeps 8 significant bits, so each implementation's bf16 logits stray from the
            # fp32 ones by rounding that depends on kernel choice and summation order. Ours pass
            # when they stray no more than 1.5x as far as transformers' own bf16 logits (+1e-3).
            ours_err = (ours["bf16"] - theirs["fp32"]).abs().max().item()
            ref_err = (theirs["bf16"] - theirs["fp32"]).abs().max().item()
            between = (ours["bf16"] - theirs["bf16"]).abs().max().item()
            c.record(f"b. logits {name} bf16", ours_err <= 1.5 * ref_err + 1e-3,
                     f"max abs(ours_bf16 - fp32) = {ours_err:.2e}, transformers' own {ref_err:.2e} "
                     f"(limit 1.5x + 1e-3); ours vs transformers bf16 {between:.2e}")


def metrics(run: Path):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]


def step_train(c: Check, model: Path, dev: Path):
    s = c.sizes
    lines = dev.read_text().splitlines(keepends=True)[: s.train_questions]
    train = c.work / "train.json"
    train.write_text("".join(lines))
    heldout = c.work / "heldout.json"
    heldout.write_text("".join(lines[-s.holdout:]))
    for precision in s.precisions:
        run = c.work / f"train-{precision}"
        code, out, secs = c.run(medbert(
            "train", "--model", model, "--train-file", train, "--holdout", s.holdout, "--output-dir", run,
            "--device", s.device, "--precision", precision,
            "--max-steps", s.train_steps, "--per-device-train-batch-size", s.train_batch,
            "--per-device-eval-batch-size", 32, "--learning-rate", s.lr, "--warmup-ratio", 0.1,
            "--logging-steps", 5, "--save-steps", s.train_steps), f"train-{precision}.log")
        step = f"c. train {precision}"
        if code != 0:
            c.record(step, False, f"exit {code}: {tail(out)}")
            continue
        m = [r for r in metrics(run) if "loss" in r]
        losses = [r["loss"] for r in m]
        finite = all(math.isfinite(v) for r in metrics(run) for v in r.values() if isinstance(v, float))
        first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
        skipped = sum(1 for r in m if r.get("skipped_step"))
        summary = json.loads((run / "summary.json").read_text())
        final = summary["final_eval"]
        code, out, _ = c.run(medbert("eval", "--model", run / "final", "--validation-file", heldout,
                                     "--cache-dir", c.work / "prepared", "--device", s.device,
                                     "--precision", precision, "--per-device-eval-batch-size", 32),
                             f"eval-{precision}.log")
        again = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
        same = (code == 0 and again.get("correct") == final["correct"]
                and abs(again.get("loss", 1e9) - final["loss_sum"] / final["questions"]) < 1e-5)
        csv = c.work / f"predictions-{precision}.csv"
        code, out, _ = c.run(medbert("predict", "--model", run / "final", "--test-file", heldout, "--output", csv,
                                     "--cache-dir", c.work / "prepared", "--device", s.device,
                                     "--precision", precision), f"predict-{precision}.log")
        predicted = code == 0 and len(csv.read_text().strip().splitlines()) == s.holdout + 1
        passed = finite and last < first - 0.02 and same and predicted
        c.record(step, passed,
                 f"{summary['steps']} steps, {summary['train_questions_per_second']:.0f} q/s, loss {first:.3f} -> "
                 f"{last:.3f} (mean of first/last 3 logged), finite {finite}, skipped steps {skipped}; "
                 f"final eval acc {final['correct']}/{final['questions']}, reloaded checkpoint acc "
                 f"{again.get('correct')}/{again.get('questions')} loss {again.get('loss', float('nan')):.6f} "
                 f"(same: {same}); predict {'ok' if predicted else 'FAILED'} ({secs:.0f} s)")


def step_ddp(c: Check, model: Path):
    s = c.sizes
    train = c.work / "train.json"
    configs = [("1 process, NCCL", 1, "nccl", "cuda"), ("2 processes on one GPU, Gloo", 2, "gloo", "cuda:0")]
    if s.cpu:
        configs = [("1 process, Gloo", 1, "gloo", "cpu"), ("2 processes, Gloo", 2, "gloo", "cpu")]
    for label, procs, backend, device in configs:
        run = c.work / f"ddp-{procs}"
        code, out, secs = c.run([BIN / "medbert-run", "--standalone", "--nproc-per-node", procs,
                                 "--model", model, "--train-file", train, "--output-dir", run,
                                 "--device", device, "--ddp-backend", backend,
                                 "--max-steps", s.ddp_steps, "--per-device-train-batch-size", s.train_batch,
                                 "--logging-steps", 1, "--verify-sync", 1, "--num-train-epochs", 1],
                                f"ddp-{procs}.log")
        summary = json.loads((run / "summary.json").read_text()) if code == 0 else {}
        ok = code == 0 and summary.get("world_size") == procs and summary.get("ddp_buckets")
        c.record(f"d. DDP {label}", ok,
                 f"exit {code}, {summary.get('steps')} steps with --verify-sync 1, world size "
                 f"{summary.get('world_size')}, {summary.get('ddp_buckets')} buckets, comm. wait "
                 f"{summary.get('ddp_exposed_ms_per_step') or 0:.1f} ms/step ({secs:.0f} s)"
                 + ("" if code == 0 else f": {tail(out)}"))


def matmul_flops(device: str, cpu: bool):
    import torch
    n = 1024 if cpu else 8192
    dtype = torch.float32 if cpu else torch.bfloat16
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    reps = 5 if cpu else 20
    if not cpu:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    if not cpu:
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - started)


def real_lengths(cache: Path):
    """Per question of the cache, on average: its real tokens and the sum of its sequences'
    squared lengths (what attention's work grows with)."""
    import numpy as np
    from safetensors.numpy import load_file
    lengths = np.diff(load_file(str(cache / "tokens.safetensors"))["offsets"]).astype(np.float64)
    questions = len(lengths) // 4
    return lengths.sum() / questions, (lengths ** 2).sum() / questions


def step_speed(c: Check, model: Path, dev: Path):
    """Ours against the HF Trainer at its best settings for BertForMultipleChoice (SDPA, fused
    AdamW, bf16; transformers has no padding-free path for multiple choice, whose classifier
    reads one [CLS] per padded row), twice: every sequence padded to 128, and on the real length
    distribution (ours packs the real tokens, the Trainer pads each batch to its longest, as
    users run it). Model FLOP utilisation counted at the padded length and on the real tokens
    (6 x non-embedding parameters x real tokens + 12 x layers x hidden x sum of squared lengths)."""
    s = c.sizes
    cache = c.work / "cache-speed"
    code, out, _ = c.run(medbert("prep", "--input", dev, "--output", cache, "--model", model), "prep-speed.log")
    precision = "fp32" if s.cpu else "bf16"
    memory = GpuMemory(not s.cpu)
    overrides = s.models["bert-base"][0]
    layers, hidden = overrides.get("num_hidden_layers", 12), overrides.get("hidden_size", 768)
    seq = 128
    non_embedding = layers * (12 * hidden * hidden + 13 * hidden) + hidden * hidden + 2 * hidden + 1
    tokens, squares = real_lengths(cache)
    padded_flops = 3 * 4 * seq * layers * (24 * hidden * hidden + 4 * seq * hidden)
    real_flops = 6 * non_embedding * tokens + 12 * layers * hidden * squares
    peak = matmul_flops(s.device, s.cpu)

    def run_ours(name, *flags):
        """One timed run of ours on the speed cache, in c.work / speed-<name>."""
        return c.run(medbert("train", "--model", model, "--train-file", cache, "--output-dir", c.work / f"speed-{name}",
                             "--device", s.device, "--precision", precision, "--max-steps", s.speed_steps,
                             "--per-device-train-batch-size", s.speed_batch, "--logging-steps", 1000, *flags),
                     f"speed-ours-{name}.log")

    def run_reference(name, *args):
        """The HF Trainer on the same cache, in c.work / speed-ref-<name>."""
        return c.run([sys.executable, KIT / "trainer_bench.py", model, cache, s.speed_batch, s.speed_steps, precision,
                      c.work / f"speed-ref-{name}", *args], f"speed-reference-{name}.log")

    runs = {}
    for padding in ("max", "longest"):
        flags = ["--pad-to-max-length"] if padding == "max" else []
        with memory:
            code, out, _ = run_ours(padding, *flags)
        if code != 0:
            c.record("e. speed", False, f"ours ({padding}) failed: {tail(out)}")
            return
        ours = json.loads((c.work / f"speed-{padding}" / "summary.json").read_text())["train_questions_per_second"]
        ours_mem = memory.gib
        with memory:
            code, out, _ = run_reference(padding, padding)
        if code != 0:
            c.record("e. speed", False, f"HF Trainer ({padding}) failed: {tail(out)}")
            return
        ref = json.loads(out.strip().splitlines()[-1])["questions_per_second"]
        runs[padding] = dict(ours_qps=ours, ref_qps=ref, ours_gib=ours_mem, ref_gib=memory.gib)
    # Where a step goes, on the real lengths: each phase timed with the device synchronised at
    # its boundaries (which slows both a little, so these runs give no throughput).
    code, out, _ = run_ours("breakdown", "--step-breakdown")
    if code != 0:
        c.record("e. speed", False, f"ours (--step-breakdown) failed: {tail(out)}")
        return
    ours_steps = json.loads((c.work / "speed-breakdown" / "summary.json").read_text())["step_breakdown_ms"]
    code, out, _ = run_reference("breakdown", "longest", "breakdown")
    if code != 0:
        c.record("e. speed", False, f"HF Trainer (breakdown) failed: {tail(out)}")
        return
    ref_steps = json.loads(out.strip().splitlines()[-1])["step_breakdown_ms"]
    c.facts["speed"] = dict(runs=runs, matmul_tflops=peak / 1e12, real_tokens_per_question=tokens,
                            step_breakdown_ms=dict(ours=ours_steps, trainer=ref_steps))
    phases = lambda t: (f"forward {t.get('forward', 0):.1f}, backward {t.get('backward', 0):.1f}, "
                        f"optimizer {t.get('optimizer', 0):.1f}"
                        + (f", all-reduce wait {t['all_reduce_wait']:.1f}" if "all_reduce_wait" in t else "") + " ms")
    mfu = lambda qps, flops: f"{qps * flops / peak * 100:.1f}%"
    max_run, real_run = runs["max"], runs["longest"]
    # On the CPU the tiny model's figures only show that both sides ran; the targets are the GPU's.
    passed = s.cpu or (real_run["ours_qps"] >= 2.5 * real_run["ref_qps"] and real_run["ours_gib"] <= real_run["ref_gib"]
                       and real_run["ours_qps"] * real_flops / peak >= 0.35)
    line = lambda name, r: (f"{name}: ours {r['ours_qps']:.1f} q/s vs HF Trainer {r['ref_qps']:.1f} q/s = "
                            f"{r['ours_qps'] / r['ref_qps']:.2f}x, peak {'GPU ' if not s.cpu else ''}memory "
                            f"{r['ours_gib']:.2f} vs {r['ref_gib']:.2f} GiB")
    c.record("e. speed vs HF Trainer" + (" (targets on the real lengths: 2.5x, memory <= Trainer's, 35% real-token "
                                          "utilisation)" if not s.cpu else " (figures only)"),
             passed,
             f"bert-base shape{' (tiny on CPU)' if s.cpu else ''}, {precision}, batch {s.speed_batch} questions x "
             f"{s.speed_steps} steps, {tokens:.0f} real tokens per question (of {4 * seq} padded). "
             f"{line('Padded to 128', max_run)}; utilisation at the padded length ours "
             f"{mfu(max_run['ours_qps'], padded_flops)} vs {mfu(max_run['ref_qps'], padded_flops)}, on the real tokens "
             f"ours {mfu(max_run['ours_qps'], real_flops)} vs {mfu(max_run['ref_qps'], real_flops)}. "
             f"{line('Real lengths', real_run)}; utilisation on the real tokens ours "
             f"{mfu(real_run['ours_qps'], real_flops)} vs {mfu(real_run['ref_qps'], real_flops)}; "
             f"of a {precision} matmul at {peak / 1e12:.1f} TFLOP/s. Per step on the real lengths, ours "
             f"{phases(ours_steps)}; the Trainer {phases(ref_steps)}")


def report(c: Check, out_dir: Path, started: float):
    passed = sum(ok for _, ok, _ in c.rows)
    lines = [f"# medbert GPU check{' (--cpu)' if c.sizes.cpu else ''}", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {passed} of {len(c.rows)} checks passed, "
             f"{time.time() - started:.0f} s.", "", "```", c.facts.get("doctor", "").strip(), "```", "",
             "| check | result | figures |", "| --- | --- | --- |"]
    lines += [f"| {name} | {'pass' if ok else '**FAIL**'} | {figures.replace('|', '/')} |" for name, ok, figures in c.rows]
    text = "\n".join(lines) + "\n"
    (out_dir / "gpu-report.md").write_text(text)
    (out_dir / "check.json").write_text(json.dumps({"rows": c.rows, "facts": c.facts}, indent=1))
    with tarfile.open(out_dir / "check-logs.tar.gz", "w:gz") as tar:
        for f in sorted(c.work.rglob("*")):
            if f.suffix in (".log", ".csv") or f.name in ("metrics.jsonl", "summary.json"):
                tar.add(f, arcname=str(f.relative_to(c.work)))
    print(text)
    return passed == len(c.rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="every step at tiny sizes on the CPU")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one in /tmp)")
    args = parser.parse_args()
    started = time.time()
    sizes = Sizes(args.cpu)
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"medbert-check-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else KIT
    c = Check(sizes, work)
    dev = KIT / "data" / "dev.json"
    step_doctor(c)
    models = build_models(c)
    steps = [("b. logits", lambda: step_logits(c, models, dev)), ("c. train", lambda: step_train(c, models["minilm"], dev)),
             ("d. DDP", lambda: step_ddp(c, models["minilm"])), ("e. speed", lambda: step_speed(c, models["bert-base"], dev))]
    for name, step in steps:
        try:
            step()
        except Exception as e:  # a broken step is a failed row, and the others still run
            c.record(name, False, f"{type(e).__name__}: {e}")
    ok = report(c, out_dir, started)
    print(f"report: {out_dir / 'gpu-report.md'}; scratch: {work}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
