"""`train.compile` on a CPU: one training step of the tiny MLLM on an edit-shaped batch (a source picture, an
instruction, the target picture: about 690 tokens) with each Llama layer `torch.compile`d (`training.compile_block`, as
`train.compile: true` does) against the same model eager, under the precision `auto` gives here. The loss is the edit
recipe's (configs/toy/edit.yaml: self_feed 1, two passes, change_weight 4). Steps alternate; prints JSON.

    python benchmarks/mllm_compile.py                 # batch 16, as configs/toy/edit.yaml
    python benchmarks/mllm_compile.py --batch 4 --steps 4
"""
import argparse, copy, json, platform, time

import torch
from _timing import alternate, edit_batch

from puma_nb.mllm import build_mllm
from puma_nb.mllm_loss import puma_loss
from puma_nb.runtime import cpu_bf16
from puma_nb.training import _blocks, FSDP_BLOCKS, compile_block


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    tok, cfg, batch = edit_batch(args.batch)
    eager = build_mllm(cfg, tok)
    compiled = copy.deepcopy(eager)
    for b in _blocks(compiled, FSDP_BLOCKS): compile_block(b)
    bf16 = cpu_bf16() is not None
    opts = {k: torch.optim.AdamW(m.parameters(), 1e-4) for k, m in (("eager", eager), ("compiled", compiled))}

    def step(name, m):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = puma_loss(m, batch, self_feed=1.0, self_feed_passes=2, change_weight=4.0)
            opts[name].zero_grad(set_to_none=True); loss.backward(); opts[name].step()
        return run
    t0 = time.perf_counter(); step("compiled", compiled)(); first = time.perf_counter() - t0  # the compile itself
    med = alternate({"eager": step("eager", eager), "compiled": step("compiled", compiled)}, args.warmup, args.steps)
    print(json.dumps({"benchmark": "tiny MLLM edit step: train.compile vs eager", "device": "cpu", "threads": torch.get_num_threads(),
                      "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "precision": "bf16" if bf16 else "fp32", "batch": args.batch, "seq_len": batch["input_ids"].shape[1],
                      "first_compiled_step_s": round(first, 1), "eager_s_per_step": round(med["eager"], 3),
                      "compiled_s_per_step": round(med["compiled"], 3),
                      "compiled_vs_eager": round(med["compiled"] / med["eager"], 3)}, indent=1))


if __name__ == "__main__":
    main()
