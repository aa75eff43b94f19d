"""A training step of the tiny MLLM on a right-padded edit batch (two pictures, ~700 tokens), with and without the
padding mask: `puma_loss` drops the mask for right-padded batches (the causal mask already hides the pads).

    python benchmarks/mllm_padding_mask.py [--batch 16] [--steps 4]

Prints JSON: median seconds per step (forward + backward, bf16 autocast on CPU) of each, and the speed-up."""
import argparse, json, sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import alternate
from puma_nb.instruct import InstructData, instruct_collate
from puma_nb.mllm import MLLMConfig, PumaLM, build_mllm, tiny_tokenizer
from puma_nb.mllm_loss import puma_loss
from puma_nb.pyramid import tiny_clip, tiny_encoder

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--steps", type=int, default=4)
args = ap.parse_args()
torch.manual_seed(0)
tok, enc = tiny_tokenizer(), tiny_encoder(tiny_clip())
model = build_mllm(MLLMConfig(), tok)
ds = InstructData("edit", 4 * args.batch, "train", 0)
batch = instruct_collate(enc, tok)([ds[i] for i in range(args.batch)])
forward = PumaLM.forward

def step(keep_mask:bool):
    def run():
        if keep_mask:  # what puma_loss did before: hand the padding mask to attention
            PumaLM.forward = lambda self, ids, f, mask=None, **kw: forward(self, ids, f, batch["attention_mask"], **kw)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16): loss, _ = puma_loss(model, batch)
            loss.backward(); model.zero_grad(set_to_none=True)
        finally: PumaLM.forward = forward
    return run

t = alternate({"padding_mask": step(True), "no_mask": step(False)}, warmup=1, steps=args.steps)
print(json.dumps({"batch": list(batch["input_ids"].shape), "padded_rows": int((~batch["attention_mask"].bool()).any(1).sum()),
                  "s_per_step": {k: round(v, 4) for k, v in t.items()}, "speedup": round(t["padding_mask"] / t["no_mask"], 3),
                  "threads": torch.get_num_threads()}))
