#!/usr/bin/env python3
"""The GPU path, checked in one command (`make gpu-check`; docs/benchmarks.md "GPU check", docs/cuda.md).

On one CUDA GPU, in about four minutes including the kernel builds:

1. build   build the CUDA WKV extensions once (wkv7, wkv6; torch's extension cache, MAX_JOBS = all cores)
           and run their self-checks, so that `auto` picks `cuda`;
2. tests   `pytest -m cuda tests/ops` in a child process, which loads the
           extensions just built from the cache (a kernel fault there cannot poison this process's CUDA
           context, which the benchmarks below still need);
3. compare train a small model a few steps in bf16-mixed on the GPU and in fp32 on the CPU from the same
           weights and batches (RWKVLitModule under a plain Lightning trainer, the trainer's real step),
           and compare the losses step by step;
4. wkv     WKV-7 forward+backward at B8 T4096 H32 N64 in bf16: our `cuda` kernel with and without an
           initial state, `chunked`, and fla's `chunk_rwkv7` when fla imports;
5. train   training throughput (tok/s), MFU and peak memory of L12-D768 and L24-D2048 at ctx 4096 in
           bf16-mixed, MFU against the GPU's bf16 dense datasheet peak and a measured 8192³ bf16 matmul.

Without a GPU it prints "no GPU: ..." and exits 0. It needs torch and lightning only: jsonargparse,
datasets, deepspeed and fla are not imported (fla is timed when it imports). Everything printed also
goes to $OUT/gpu_check.txt and, as numbers, to $OUT/gpu_check.json when OUT (or --out) is set; both are
rewritten after every section (temporary file, then rename), so a run stopped early keeps what it measured.
Exit status: 0 when every check that ran passed (or there is no GPU), 1 otherwise.

    python bench/gpu_check.py                 # everything (what `make gpu-check` runs)
    python bench/gpu_check.py --sections wkv train
    python bench/gpu_check.py --smoke         # every section at tiny sizes on the CPU (tests only)
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

try:
    import torch
except ImportError:  # the wrong interpreter: say which, rather than a traceback
    sys.exit(f"gpu-check: {sys.executable} has no torch; run it with the python that has torch "
             "(`make gpu-check PY=/path/to/python`, or `make setup` first)")

SECTIONS = ("build", "tests", "compare", "wkv", "train")

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; the first name that is a
# substring of torch.cuda.get_device_name() wins, so the more specific names come first.
BF16_DENSE_PEAK_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H200", 989.0),  # SXM
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)

# The WKV-7 benchmark shape: the heads of a 2048-channel model, 4096-token segments, micro batch 8.
WKV_SHAPE = dict(B=8, T=4096, H=32, N=64)
WKV_AGREE_TOL = 3e-2  # max rel Δ between our backends in the timing table (see section_wkv)
# Training models: (name, n_layer, n_embd, micro batch); ctx 4096, World vocab.
TRAIN_MODELS = (("L12-D768", 12, 768, 8), ("L24-D2048", 24, 2048, 4))
TRAIN_CTX, TRAIN_VOCAB = 4096, 65536

# The loss comparison: 4 layers x 256 channels (4 heads of 64: the cuda kernel's head size), 320-token
# vocab, 2 segments of 256 tokens per sample (carries the state across a segment boundary), 6 steps.
COMPARE = dict(n_layer=4, n_embd=256, vocab=320, ctx=256, segments=2, batch=4, steps=6, lr=1e-3)
# bf16-mixed vs fp32 tolerance on each step's mean loss, relative to the fp32 loss. Step 0 sees the same
# weights, so only rounding differs: autocast feeds every matmul bf16 inputs (relative rounding 2^-9),
# which perturbs the logits by ~0.3% and the mean CE over 2048 tokens by far less; 1% leaves room for
# the bf16 WKV kernel (its own self-check tolerance is 3e-2 per tensor, on maxima, not means). Later
# steps also carry the diverging Adam updates (bf16 gradients; Adam's first steps move every weight by
# about lr whatever the gradient's size, so small gradient differences can flip a step's sign): 3%.
# A wrong kernel or a broken mixed-precision path moves the loss by far more (a zero WKV output alone
# changes it by tens of percent).
COMPARE_TOL = (0.01, 0.03)

SMOKE = dict(wkv=dict(B=1, T=64, H=2, N=64), train=(("L2-D128", 2, 128, 2),), ctx=64, vocab=320,
             compare=dict(n_layer=2, n_embd=128, vocab=320, ctx=32, segments=2, batch=2, steps=3, lr=1e-3),
             matmul=1024)


# ------------------------------------------------------------------------------------------ pure logic
def params_except_embedding(model: torch.nn.Module) -> int:
    """N in the 6·N FLOPs-per-token rule: every parameter except the embedding table (a lookup, no
    multiply); the head counts. The WKV recurrence is left out (about 1% of the FLOPs at 2048 channels)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.endswith("emb.weight"))


def train_flops_per_token(n_params: int) -> float:
    """Forward + backward FLOPs per token of a dense model: 2N forward and 4N backward multiply-adds."""
    return 6.0 * n_params


def mfu(tok_s: float, n_params: int, peak_flops: float | None) -> float | None:
    """Model FLOPs utilization: achieved 6·N·tok/s over a peak in FLOP/s (None when the peak is unknown)."""
    if not peak_flops:
        return None
    return train_flops_per_token(n_params) * tok_s / peak_flops


def bf16_peak_tflops(device_name: str) -> float | None:
    """The datasheet bf16 dense peak of a GPU named `device_name`, or None if it is not in the table."""
    for key, tflops in BF16_DENSE_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def fmt(x, spec: str = ".2f", none: str = "n/a") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table whose columns are padded to equal width (readable as text, pasteable as docs).
    The first column is left-aligned, the others right-aligned (numbers)."""
    cells = [[str(c) for c in r] for r in rows]
    width = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    just = lambda i, s: s.ljust(width[i]) if i == 0 else s.rjust(width[i])
    line = lambda r: "| " + " | ".join(just(i, s) for i, s in enumerate(r)) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else (":" + "-" * (w + 1)) for i, w in enumerate(width)) + "|"
    return [line(headers), rule] + [line(r) for r in cells]


def loss_verdict(ref: list[float], test: list[float], tol=COMPARE_TOL) -> tuple[bool, list[float]]:
    """(all within tolerance, relative differences) for two per-step loss lists (tol[0] for step 0)."""
    rel = [abs(t - r) / abs(r) for r, t in zip(ref, test)]
    ok = len(ref) == len(test) > 0 and all(math.isfinite(x) for x in test) and all(
        d <= (tol[0] if i == 0 else tol[1]) for i, d in enumerate(rel))
    return ok, rel


# --------------------------------------------------------------------------------------------- report
class Report:
    """Prints, and keeps the text and a JSON summary under `out` (rewritten atomically after each section)."""

    def __init__(self, out: str | None):
        self.out = Path(out) if out else None
        self.lines: list[str] = []
        self.data: dict = {}
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)

    def say(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def put(self, key: str, value) -> None:
        self.data[key] = value

    def save(self) -> None:
        self.attach("gpu_check.txt", "\n".join(self.lines) + "\n")
        self.attach("gpu_check.json", json.dumps(self.data, indent=1, default=str) + "\n")

    def attach(self, name: str, text: str) -> None:
        """Write `text` to out/name (temporary file, then rename); nothing without an output folder."""
        if self.out:
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


# ---------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `reps` calls of fn() after `warmup` calls, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def matmul_flops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """Best FLOP/s of an n³ matmul in bf16 on the GPU (fp32 on the CPU: smoke runs only)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    best = min(timed(lambda: a @ b, device, reps, warmup=3))
    return 2 * n**3 / best


# ------------------------------------------------------------------------------------------- sections
def section_build(rep: Report, device: torch.device) -> bool:
    rep.say("", "## build: CUDA WKV extensions (once) and their self-checks")
    if device.type != "cuda":
        rep.say("skipped: no CUDA device")
        return True
    from rwkv.ops import build, dispatch

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))  # ninja's parallel nvcc jobs
    result, ok = {}, True
    for ext in ("wkv7", "wkv6"):
        t = time.perf_counter()
        built = build.extension(ext) is not None
        dt = time.perf_counter() - t
        why = "" if built else f": {build._extensions.get(ext)}"
        rep.say(f"{ext} extension: {'built/loaded' if built else 'FAILED'} in {dt:.1f} s{why}")
        result[ext] = {"built": built, "seconds": round(dt, 1)}
        ok &= built
    for op in ("wkv7", "wkv6", "wkv5"):
        t = time.perf_counter()
        passed = bool(dispatch.cuda_ready(op, device))
        rep.say(f"{op} self-check on {device}: {'passed' if passed else 'FAILED'} ({time.perf_counter() - t:.1f} s); "
                f"auto -> {'cuda' if passed else 'chunked'}")
        result[f"{op}_self_check"] = passed
        ok &= passed
    rep.put("build", result)
    return ok


def section_tests(rep: Report, budget_s: float) -> bool:
    rep.say("", "## tests: pytest -m cuda tests/ops (child process, cached build)")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
           "tests/ops"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(budget_s, 30))
    except subprocess.TimeoutExpired:
        rep.say(f"FAILED: the tests ran past {max(budget_s, 30):.0f} s")
        rep.put("tests", {"ok": False, "summary": "timeout"})
        return False
    rep.attach("gpu_check_pytest.txt", p.stdout + p.stderr)  # the whole pytest output, beside the summary
    out = (p.stdout + p.stderr).strip().splitlines()
    if p.returncode != 0 and any("No module named pytest" in ln for ln in out):
        rep.say("not run: pytest is not installed for this python")
        rep.put("tests", {"ok": None, "summary": "no pytest"})
        return True
    summary = next((ln for ln in reversed(out) if " in " in ln and ("passed" in ln or "failed" in ln
                                                                    or "skipped" in ln or "error" in ln)), "")
    ok = p.returncode == 0
    if not ok:
        rep.say(*out[-40:])
    rep.say(f"{summary.strip('= ')} (exit {p.returncode}, {time.perf_counter() - t:.0f} s)")
    rep.put("tests", {"ok": ok, "summary": summary.strip("= "), "exit": p.returncode})
    return ok


def _lit_module(n_layer, n_embd, vocab, ctx, device=None, grad_cp=False, lr=6e-4):
    """RWKVLitModule for a fresh x070 model (built under `device` when given: the official init's QRs
    are much faster on a GPU; on any failure there the model is built on the CPU)."""
    from rwkv.training.lit_module import RWKVLitModule

    kw = dict(version="x070", n_layer=n_layer, n_embd=n_embd, head_size=64, vocab_size=vocab, ctx_len=ctx,
              bptt="full", grad_cp=grad_cp, lr_init=lr, lr_final=lr, lr_schedule="constant", warmup_steps=1)
    if device is not None and device.type == "cuda":
        try:
            with torch.device(device):
                return RWKVLitModule(**kw)
        except Exception as e:  # noqa: BLE001 - building on the GPU is only a speed-up
            warnings.warn(f"building on {device} failed ({type(e).__name__}: {e}); building on the CPU", stacklevel=2)
    return RWKVLitModule(**kw)


def _fit(lit, batches, device: torch.device, precision: str) -> tuple[list[float], list[float]]:
    """Run one optimizer step per batch with a plain Lightning trainer (RWKVTrainer: the trainer class of
    the CLI, without LightningCLI); returns (per-step seconds, per-step logged train/loss)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from rwkv.training.trainer import RWKVTrainer

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banners between the tables
    times, losses = [], []

    class StepLog(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync(device)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync(device)
            times.append(time.perf_counter() - self.t0)
            loss = trainer.callback_metrics.get("train/loss")
            losses.append(float(loss) if loss is not None else float("nan"))

    trainer = RWKVTrainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
        max_steps=len(batches), max_epochs=1, microbatch_size=batches[0]["input_ids"].shape[0],
        # the CLI's trainer defaults (rwkv/cli.py TRAINER_DEFAULTS; not imported: it needs jsonargparse)
        gradient_clip_val=1.0, num_sanity_val_steps=0, use_distributed_sampler=False,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[StepLog()], limit_val_batches=0,
    )
    trainer.fit(lit, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    return times, losses


def _compare_batches(c: dict) -> list[dict]:
    """Learnable rows: every row cycles through one fixed random 24-token motif from a random phase, so a
    few steps learn its bigrams and the loss falls (a check that training moves at all); half the tokens
    are replaced by random ones, which keeps the loss far from 0 (above ~½·ln V), where relative
    differences stay meaningful."""
    g = torch.Generator().manual_seed(1234)
    T = c["ctx"] * c["segments"] + 1
    motif = torch.randint(0, c["vocab"], (24,), generator=g)
    out = []
    for _ in range(c["steps"]):
        phase = torch.randint(0, 24, (c["batch"], 1), generator=g)
        ids = motif[(phase + torch.arange(T)) % 24]
        noise = torch.rand(ids.shape, generator=g) < 0.5
        ids = torch.where(noise, torch.randint(0, c["vocab"], ids.shape, generator=g), ids)
        out.append({"input_ids": ids, "loss_mask": torch.ones(c["batch"], T)})
    return out


def section_compare(rep: Report, device: torch.device, c: dict) -> bool:
    rep.say("", f"## compare: bf16-mixed on {device} vs fp32 on the CPU, same weights and batches "
                f"(L{c['n_layer']}-D{c['n_embd']}, vocab {c['vocab']}, {c['segments']} segments of {c['ctx']}, "
                f"micro batch {c['batch']}, lr {c['lr']})")
    torch.manual_seed(0)
    ref = _lit_module(c["n_layer"], c["n_embd"], c["vocab"], c["ctx"], lr=c["lr"])
    test = copy.deepcopy(ref)
    batches = _compare_batches(c)
    _, loss32 = _fit(ref, batches, torch.device("cpu"), "32-true")
    _, loss16 = _fit(test, batches, device, "bf16-mixed")
    ok, rel = loss_verdict(loss32, loss16)
    rows = [[str(i), f"{a:.5f}", f"{b:.5f}", f"{d:.2e}", f"{COMPARE_TOL[0] if i == 0 else COMPARE_TOL[1]:.0e}"]
            for i, (a, b, d) in enumerate(zip(loss32, loss16, rel))]
    rep.say(*format_table(["step", "fp32 CPU", f"bf16-mixed {device.type}", "rel diff", "tolerance"], rows))
    falls = loss16[-1] < loss16[0]
    rep.say(f"{'PASSED' if ok and falls else 'FAILED'}: every step within tolerance: {ok}; "
            f"bf16 loss falls ({loss16[0]:.3f} -> {loss16[-1]:.3f}): {falls}")
    rep.put("compare", {"ok": ok and falls, "fp32_cpu": loss32, "bf16_mixed": loss16, "rel_diff": rel,
                        "tolerance": COMPARE_TOL, "config": c})
    return ok and falls


def wkv7_inputs(B, T, H, N, device, dtype, seed=0):
    """WKV-7 inputs in the model's range (docs/model-spec.md §1.3): λ = −e^{−½}σ(2z) ∈ (−0.6066, 0),
    a = −κ̂ and b = κ̂⊙α with κ̂ unit-norm per head and α ∈ (0, 1); an fp32 initial state [B,H,V,K]."""
    g = torch.Generator(device=device).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device=device, generator=g)
    r, k, v = rnd(B, T, H, N), rnd(B, T, H, N), rnd(B, T, H, N)
    w = -math.exp(-0.5) * torch.sigmoid(2 * rnd(B, T, H, N))
    kappa = torch.nn.functional.normalize(rnd(B, T, H, N), dim=-1)
    alpha = torch.rand(B, T, H, N, device=device, generator=g)
    xs = [x.to(dtype) for x in (r, w, k, v, -kappa, kappa * alpha)]
    return xs, 0.1 * rnd(B, H, N, N)


def time_wkv(fn, xs, state, gy, gS, device, reps: int = 5) -> tuple[float, float]:
    """Median seconds of fn(xs, state) forward+backward (dense upstream gradients for y and the final
    state; gradients reach every input and the initial state when given) and of the forward alone."""
    leaves = [x.detach().clone().requires_grad_() for x in xs]
    s_leaf = None if state is None else state.detach().clone().requires_grad_()

    def fwd_bwd():
        for t in leaves + ([s_leaf] if s_leaf is not None else []):
            t.grad = None
        y, sT = fn(leaves, s_leaf)
        torch.autograd.backward((y, sT), (gy.to(y.dtype), gS.to(sT.dtype)))

    def fwd():
        with torch.no_grad():
            fn(leaves, s_leaf)

    t_fb = statistics.median(timed(fwd_bwd, device, reps, warmup=2))
    return t_fb, statistics.median(timed(fwd, device, reps, warmup=1))


def _fla_op():
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except Exception as e:  # noqa: BLE001 - fla is optional: ImportError, or Triton failing at import
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return chunk_rwkv7, ""


def section_wkv(rep: Report, device: torch.device, shape: dict, budget_left) -> bool:
    from rwkv.ops import wkv7

    B, T, H, N = (shape[k] for k in "BTHN")
    dtype = torch.bfloat16
    rep.say("", f"## wkv: WKV-7 at B{B} T{T} H{H} N{N} {str(dtype).split('.')[-1]} on {device} "
                "(ms per call: median of 5 after a warm-up; fwd+bwd with dense upstream gradients for y and "
                "the final state)")
    xs, s0 = wkv7_inputs(B, T, H, N, device, dtype)
    g = torch.Generator(device=device).manual_seed(1)
    gy = torch.randn(B, T, H, N, device=device, generator=g).to(dtype)
    gS = torch.randn(B, H, N, N, device=device, generator=g)

    def ours(backend):
        return lambda xs_, s: wkv7(*xs_, state=s, backend=backend)

    chunk_rwkv7, fla_why = _fla_op()

    def fla(**kw):
        def run(xs_, s):
            s_fla = None if s is None else s.transpose(-1, -2).contiguous()
            y, sT = chunk_rwkv7(*xs_, scale=1.0, initial_state=s_fla,
                                output_final_state=True, **kw)
            return y, sT.transpose(-1, -2)  # fla keeps [B,H,K,V]; ours is [B,H,V,K]
        return run

    cases = []
    if device.type == "cuda":
        cases += [("cuda", "zero", ours("cuda")), ("cuda", "given", ours("cuda"))]
    else:
        cases += [("cpu", "given", ours("cpu"))]
    cases += [("chunked", "given", ours("chunked"))]
    if chunk_rwkv7 is not None and device.type == "cuda":
        # fla's defaults, then what fla's RWKV7Attention layer passes (tensor-core path, 64-token chunks)
        cases += [("fla chunk_rwkv7", "given", fla()),
                  ("fla chunk_rwkv7 safe_gate", "given", fla(safe_gate=True, lower_bound=-math.exp(-0.5)))]

    pairs, baselines, ok = [], {}, True  # (table row, json row); first output per initial state
    for name, init, fn in cases:
        # fla's first call autotunes and compiles its Triton kernels (tens of seconds per variant)
        if budget_left() < (60 if name.startswith("fla") else 15):
            pairs.append(([name, init, "skipped (time budget)", "", "", "", ""], {"backend": name, "skipped": True}))
            continue
        state = s0 if init == "given" else None
        try:
            t_fb, t_f = time_wkv(fn, xs, state, gy, gS, device)
            with torch.no_grad():
                y, sT = fn(xs, state)
            out = (y.float(), sT.float())
            del y, sT
            ref_name, ref_t, ref = baselines.setdefault(init, (name, t_fb, out))
            dy, dS = ((o - r).abs().max().item() / r.abs().max().item() for o, r in zip(out, ref))
            del out
            # Our backends must agree at this size too (a race or indexing fault may only show at full
            # occupancy): both compute in fp32 from the same bf16 inputs and differ by the bf16 rounding
            # of the kernel's y (2^-9) and TF32 matmuls in chunked (~4e-4); 3e-2 is the self-check's bf16 bound.
            agree = name.startswith("fla") or max(dy, dS) <= WKV_AGREE_TOL
            if not agree:
                rep.say(f"{name}: differs from {ref_name} by {max(dy, dS):.1e} > {WKV_AGREE_TOL:.0e}: FAILED")
            ok &= agree
            pairs.append(([name, init, f"{1e3 * t_fb:.1f}", f"{1e3 * t_f:.1f}", f"{t_fb / ref_t:.2f}x",
                           f"{dy:.1e}", f"{dS:.1e}" + ("" if agree else " FAILED")],
                          {"backend": name, "initial_state": init, "fwd_bwd_ms": 1e3 * t_fb, "fwd_ms": 1e3 * t_f,
                           "time_vs": ref_name, "x_time": t_fb / ref_t, "max_rel_diff_y": dy,
                           "max_rel_diff_state": dS}))
        except Exception as e:  # noqa: BLE001 - one failing backend must not hide the others
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:160]
            pairs.append(([name, init, "FAILED", "", "", "", ""], {"backend": name, "initial_state": init,
                                                                    "error": msg}))
            rep.say(f"{name}: {msg}")
            ok &= name.startswith("fla")  # fla is informative only; our backends must run
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    rows = [r for r, _ in pairs]
    result = [j for _, j in pairs]
    rep.say(*format_table(["backend", "initial state", "fwd+bwd ms", "fwd ms", "time vs ours", "max rel Δ y",
                           "max rel Δ state"], rows))
    rep.say("time vs ours, Δ: against the first row with the same initial state (Δ = max |Δ| / max |ref| "
            "of the forward output y and final state, bf16 inputs; the state is fp32)")
    if chunk_rwkv7 is None:
        rep.say(f"fla: not timed ({fla_why or 'no GPU'})")
    rep.put("wkv", {"shape": shape, "dtype": "bf16", "rows": result, "fla": fla_why or "imported"})
    return ok


def section_train(rep: Report, device: torch.device, models, ctx: int, vocab: int, matmul_n: int,
                  budget_left) -> bool:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak_tf = bf16_peak_tflops(name) if device.type == "cuda" else None
    measured = matmul_flops(device, matmul_n)
    rep.say("", f"## train: bf16-mixed training step on {name}, ctx {ctx}, vocab {vocab}, bptt full, "
                "AdamW, clip 1.0 (median of the timed steps after 2 warm-up steps)",
            f"bf16 dense peak (datasheet): {fmt(peak_tf, '.0f')} TFLOP/s; measured {matmul_n}³ "
            f"{'bf16' if device.type == 'cuda' else 'fp32'} matmul: {measured / 1e12:.1f} TFLOP/s",
            "MFU = 6 · N · tok/s / peak, N = parameters except the embedding (bench/gpu_check.py "
            "params_except_embedding)")
    rows, result, ok = [], [], True
    for label, n_layer, n_embd, batch in models:
        if budget_left() < 25:
            rows.append([label, "", "", "", "skipped (time budget)", "", "", "", "", ""])
            continue
        # micro batch, then activation checkpointing, then half the batch when memory runs out
        tries = [(batch, False), (batch, True)] + [(b, True) for b in (batch // 2, batch // 4, 1) if 0 < b < batch]
        for b, grad_cp in dict.fromkeys(tries):
            lit = None
            try:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                torch.manual_seed(0)
                lit = _lit_module(n_layer, n_embd, vocab, ctx, device=device, grad_cp=grad_cp)
                n = params_except_embedding(lit.model)
                g = torch.Generator().manual_seed(0)
                batches = [{"input_ids": torch.randint(0, vocab, (b, ctx + 1), generator=g),
                            "loss_mask": torch.ones(b, ctx + 1)} for _ in range(5 if device.type == "cuda" else 3)]
                times, losses = _fit(lit, batches, device, "bf16-mixed")
                step = statistics.median(times[2:] if len(times) > 2 else times)
                tok_s = b * ctx / step
                mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                m_peak = mfu(tok_s, n, peak_tf * 1e12 if peak_tf else None)
                m_meas = mfu(tok_s, n, measured)
                finite = all(math.isfinite(x) for x in losses)
                ok &= finite
                rows.append([label, str(b), "yes" if grad_cp else "no", f"{n / 1e6:.0f}M", f"{step:.3f}",
                             f"{tok_s:,.0f}", f"{train_flops_per_token(n) * tok_s / 1e12:.1f}",
                             fmt(None if m_peak is None else 100 * m_peak, ".1f"), fmt(100 * m_meas, ".1f"),
                             fmt(mem, ".1f")])
                result.append({"model": label, "micro_batch": b, "grad_cp": grad_cp, "params_no_emb": n,
                               "step_s": step, "step_times": times, "tok_s": tok_s,
                               "tflops": train_flops_per_token(n) * tok_s / 1e12, "mfu_peak": m_peak,
                               "mfu_matmul": m_meas, "peak_mem_gib": mem, "losses": losses, "finite": finite})
                break
            except torch.cuda.OutOfMemoryError:
                rep.say(f"{label}: out of memory at micro batch {b}, grad_cp {grad_cp}")
            except Exception as e:  # noqa: BLE001 - report, then the next model
                msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:160]
                rep.say(f"{label}: FAILED: {msg}")
                rows.append([label, str(b), "", "", "FAILED", "", "", "", "", ""])
                result.append({"model": label, "error": msg})
                ok = False
                break
            finally:
                del lit
                gc.collect()
        else:
            rows.append([label, "", "", "", "out of memory", "", "", "", "", ""])
            result.append({"model": label, "error": "out of memory"})
            ok = False
    rep.say(*format_table(["model", "micro batch", "grad_cp", "params", "step s", "tok/s", "TFLOP/s",
                           "MFU % (peak)", "MFU % (matmul)", "peak mem GiB"], rows))
    rep.put("train", {"device": name, "bf16_peak_tflops": peak_tf, "matmul_tflops": measured / 1e12,
                      "matmul_n": matmul_n, "ctx": ctx, "vocab": vocab, "rows": result})
    return ok


# ------------------------------------------------------------------------------------------------ main
def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "cpus": os.cpu_count()}
    try:
        import lightning

        env["lightning"] = lightning.__version__
    except ImportError:
        env["lightning"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_mem_gib=round(p.total_memory / 2**30, 1))
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.txt/json (default: $OUT)")
    p.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--budget", type=float, default=240.0,
                   help="seconds for the whole run: optional parts are skipped when it runs low")
    p.add_argument("--smoke", action="store_true",
                   help="no GPU needed: every section at tiny sizes on the CPU (to test this script)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    budget_left = lambda: args.budget - (time.perf_counter() - t0)
    os.chdir(ROOT)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*validation_step. but have no .val_dataloader.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    rep = Report(args.out)

    if not torch.cuda.is_available() and not args.smoke:
        rep.say(f"no GPU: torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}) sees no CUDA device; "
                "the GPU check needs one NVIDIA GPU. Nothing was run.")
        rep.put("gpu", None)
        rep.put("ok", True)
        rep.save()
        return 0

    device = torch.device("cuda", torch.cuda.current_device()) if not args.smoke else torch.device("cpu")
    if device.type == "cuda":  # as the CLI does on GPU (rwkv/cli.py): TF32 for the fp32 matmuls
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    env = environment(device)
    rep.say(f"# gpu-check: {env.get('gpu', 'CPU smoke run (tiny sizes)')}"
            + (f" (sm_{env['capability'].replace('.', '')}, {env['gpu_mem_gib']} GiB)" if "gpu" in env else "")
            + f"; torch {env['torch']} CUDA {env['cuda']}, lightning {env['lightning']}, python {env['python']}, "
            f"{env['cpus']} CPUs")
    rep.put("env", env)
    rep.put("gpu", env.get("gpu"))
    rep.save()

    verdicts = {}
    for name in args.sections:
        t = time.perf_counter()
        try:
            if name == "build":
                verdicts[name] = section_build(rep, device)
            elif name == "tests":
                # (on the CPU, in smoke runs, the same command reports every test skipped)
                verdicts[name] = section_tests(rep, min(150.0, budget_left()))
            elif name == "compare":
                verdicts[name] = section_compare(rep, device, SMOKE["compare"] if args.smoke else COMPARE)
            elif name == "wkv":
                # keep ~90 s of the budget for the training table when it comes next
                reserve = 90 if "train" in args.sections and not args.smoke else 0
                verdicts[name] = section_wkv(rep, device, SMOKE["wkv"] if args.smoke else WKV_SHAPE,
                                             lambda r=reserve: budget_left() - r)
            elif name == "train":
                verdicts[name] = section_train(
                    rep, device, SMOKE["train"] if args.smoke else TRAIN_MODELS,
                    SMOKE["ctx"] if args.smoke else TRAIN_CTX, SMOKE["vocab"] if args.smoke else TRAIN_VOCAB,
                    SMOKE["matmul"] if args.smoke else 8192, budget_left)
        except Exception as e:  # noqa: BLE001 - a section's crash is reported and the next one still runs
            import traceback

            rep.say(f"{name}: CRASHED: {type(e).__name__}: {e}", *traceback.format_exc().splitlines()[-12:])
            verdicts[name] = False
        rep.say(f"({name}: {time.perf_counter() - t:.0f} s)")
        rep.put("verdicts", verdicts)
        rep.save()
    ok = all(verdicts.values())
    rep.say("", f"gpu-check {'PASSED' if ok else 'FAILED'}: "
            + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in verdicts.items())
            + f"; total {time.perf_counter() - t0:.0f} s")
    rep.put("ok", ok)
    rep.put("seconds", round(time.perf_counter() - t0, 1))
    rep.save()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
