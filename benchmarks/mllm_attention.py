"""Which attention kernel an MLLM step should use on a CPU: one training step of the tiny MLLM on an edit-shaped batch
(as `mllm_compile.py`: a source picture, an instruction, the target picture, about 690 tokens; the edit recipe's loss)
with PyTorch's scaled-dot-product attention left to choose its kernel (on a CPU in bf16: the fused flash kernel) against
the same step under `sdpa_kernel(SDPBackend.MATH)` (two batched matmuls and a softmax), eager: the flash kernel runs at a
small share of the CPU's bf16 peak, so would plain matmuls beat it? (Compiled layers are not compared: the compiled
code does not re-trace when only the kernel choice changes. transformers' `flex_attention` has no backward on a CPU.)
Steps alternate; prints JSON, with each variant's first loss.

    python benchmarks/mllm_attention.py                 # batch 16, as configs/toy/edit.yaml (about 2 minutes)
    python benchmarks/mllm_attention.py --batch 4 --steps 4
"""
import argparse, copy, json, platform

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from _timing import alternate, edit_batch

from puma_nb.mllm import build_mllm
from puma_nb.mllm_loss import puma_loss
from puma_nb.runtime import cpu_bf16


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    tok, cfg, batch = edit_batch(args.batch)
    base = build_mllm(cfg, tok)
    bf16 = cpu_bf16() is not None
    kernels = {"default": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], "math": [SDPBackend.MATH]}
    models = {k: copy.deepcopy(base) for k in kernels}
    opts, losses = {k: torch.optim.AdamW(m.parameters(), 1e-4) for k, m in models.items()}, {}

    def step(name):
        m, k = models[name], kernels[name]
        def run():
            torch.manual_seed(1)  # the same self_feed draw for every variant
            with sdpa_kernel(k), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = puma_loss(m, batch, self_feed=1.0, self_feed_passes=2, change_weight=4.0)
            opts[name].zero_grad(set_to_none=True); loss.backward(); opts[name].step()
            losses.setdefault(name, []).append(loss.item())
        return run
    med = alternate({name: step(name) for name in kernels}, args.warmup, args.steps)
    print(json.dumps({"benchmark": "tiny MLLM edit step: SDPA's own kernel choice vs the math kernel", "device": "cpu",
                      "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "precision": "bf16" if bf16 else "fp32", "batch": args.batch,
                      "seq_len": batch["input_ids"].shape[1],
                      "s_per_step": {k: round(v, 3) for k, v in med.items()},
                      "math_vs_default": round(med["math"] / med["default"], 3),
                      "first_loss": {k: round(v[0], 5) for k, v in losses.items()}}, indent=1))


if __name__ == "__main__":
    main()
