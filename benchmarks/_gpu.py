"""Shared by the GPU step benchmarks (gpu_mllm.py, gpu_decoder.py): the device and its peak, the common command line,
step timing under a deadline, one variant at a time with errors (OOM above all) recorded instead of raised, and
JSON written after every variant, so that a run cut short still leaves its numbers."""
import os

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # variants are built and freed in turn
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is built from a config: nothing may come from the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse, contextlib, gc, json, platform, statistics, sys, time, traceback
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def common_args(ap: argparse.ArgumentParser):
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, for checking the code paths on a CPU in seconds")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant (the median is reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variants (they are listed as skipped)")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune-no-cudagraphs (slow to compile)")
    ap.add_argument("--variants", default="", help="comma-separated subset of the variants, in the order to run them")
    ap.add_argument("--peak-tflops", type=float, default=0, help="the device's dense bf16 peak; 0: from the device name")
    ap.add_argument("--max-seconds", type=float, default=240, help="time guard: variants not started by then are skipped")
    ap.add_argument("--out", default="", help="also write the JSON here (rewritten after every variant)")
    ap.add_argument("--seed", type=int, default=0)


def setup(args) -> torch.device:
    "The device, with the fast-math switches on (TF32 for any fp32 matmul or conv, cuDNN autotuning)."
    dev = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    dyn = torch._dynamo.config  # many block shapes compile separately (the UNet): let the cache hold them all
    for k in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(dyn, k): setattr(dyn, k, max(getattr(dyn, k), 256))
    return dev


def peak_flops(dev: torch.device, override_tflops: float = 0) -> tuple[float | None, str]:
    "Dense bf16 peak FLOP/s and where it came from; None on a CPU or an unknown GPU (MFU is then null)."
    if override_tflops: return override_tflops * 1e12, "--peak-tflops"
    if dev.type != "cuda": return None, "cpu: no peak, MFU is null"
    name = torch.cuda.get_device_name(dev)
    flops = peak_for_name(name)
    return (flops, f"{name}: dense bf16 from the table") if flops else (None, f"unknown GPU {name!r}: pass --peak-tflops")


def peak_for_name(name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16 if key in name), None)


def device_info(dev: torch.device) -> dict:
    import diffusers, transformers
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "transformers": transformers.__version__, "diffusers": diffusers.__version__}
    if dev.type == "cuda":
        info.update(memory_gib=round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1), cuda=torch.version.cuda)
    else: info["threads"] = torch.get_num_threads()
    return info


def total_memory(dev: torch.device) -> int:
    return torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else 0


@contextlib.contextmanager
def building(dev: torch.device, dtype=torch.bfloat16):
    "Build modules straight on `dev` in `dtype` (an 8B model initialised on a CPU in fp32 would take minutes)."
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev): yield
    finally: torch.set_default_dtype(old)


def adamw(params, dev: torch.device, lr: float = 1e-5) -> torch.optim.AdamW:
    "Fused AdamW; its states take the parameters' dtype (bf16 here)."
    params = list(params)
    try: return torch.optim.AdamW(params, lr=lr, fused=True)
    except (RuntimeError, ValueError): return torch.optim.AdamW(params, lr=lr, foreach=True)  # a device without the fused kernel


def sync(dev: torch.device):
    if dev.type == "cuda": torch.cuda.synchronize(dev)


def time_steps(step, dev: torch.device, warmup: int, steps: int, deadline: float) -> dict:
    "Run `step` (returns the detached loss) warmup + steps times; seconds per step, synchronised around each step."
    times, first, losses = [], None, []
    for i in range(warmup + max(steps, 1)):
        sync(dev); t0 = time.perf_counter()
        loss = step()
        sync(dev); dt = time.perf_counter() - t0
        losses.append(loss)
        if i == 0: first = dt
        if i >= warmup: times.append(dt)
        if times and time.monotonic() > deadline: break  # out of time: keep what was measured
    losses = [float(l) for l in losses]
    return {"step_s": statistics.median(times), "step_s_min": min(times), "steps_timed": len(times),
            "first_step_s": round(first, 3), "first_loss": losses[0], "last_loss": losses[-1],
            "finite": all(l == l and abs(l) != float("inf") for l in losses)}


def free(dev: torch.device):
    gc.collect()
    if dev.type == "cuda": torch.cuda.empty_cache()


def run_variant(name: str, fn, dev: torch.device, compiled: bool = False) -> dict:
    """`fn()` → its dict, plus peak memory; an exception (an OOM above all) is recorded as `error`, and the run goes on.
    `compiled`: forget the compiled graphs afterwards (they may hold on to the freed model; the on-disk inductor cache
    keeps a later recompilation cheap)."""
    free(dev)
    if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.monotonic()
    try: res = fn()
    except Exception as e:  # torch.OutOfMemoryError included
        oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
        res = {"error": ("OOM: " if oom else "") + f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
               "oom": oom, "traceback": traceback.format_exc(limit=-4)[-1500:]}
        print(f"[{name}] failed: {res['error']}", file=sys.stderr, flush=True)
        del e
    if dev.type == "cuda":
        res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        res["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(dev) / 2**30, 2)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    if compiled: torch._dynamo.reset()
    free(dev)
    return res


def compare_to_plain(variants: dict):
    "Each variant's step time over plain's (ratio < 1: faster) and speed-up."
    p = variants.get("plain", {}).get("step_s")
    for v in variants.values():
        if p and v.get("step_s"):
            v["ratio_to_plain"] = round(v["step_s"] / p, 3)
            v["speedup_vs_plain"] = round(p / v["step_s"], 3)


def write(result: dict, out: str):
    text = json.dumps(result, indent=1, default=str)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(out).with_suffix(".partial")
        tmp.write_text(text); tmp.replace(out)
    return text


def count_forward_flops(fn, dev) -> int:
    "FLOPs of one forward by torch's FlopCounterMode (on a CPU through the math attention kernel, which it can count)."
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as fc, \
            (sdpa_kernel([SDPBackend.MATH]) if dev.type == "cpu" else contextlib.nullcontext()):
        fn()
    return fc.get_total_flops()


def skip_reason(name: str, compiled: bool, args, deadline: float, dev: torch.device, min_left: dict) -> str | None:
    "Why variant `name` does not run: --no-compile for a compiled one, or too little of --max-seconds left to start it."
    if compiled and args.no_compile: return "--no-compile"
    left = deadline - time.monotonic()
    if left < (min_left.get(name, 10) if dev.type == "cuda" else 5): return f"time guard: {left:.0f} s left of --max-seconds {args.max_seconds}"
    return None
