"""Cost of one training step of PUMA's MLLM (word embeddings + input projector at the feature tokens + Llama +
Eq. 2: CE on the text targets, regression head on the feature targets) against a plain transformers Llama step
on the same sequence shape (input_ids, next-token CE over every position). Steps alternate; prints JSON.

    python benchmarks/mllm_step.py                    # the tiny MLLM, a text-to-image batch
    python benchmarks/mllm_step.py --batch 16 --steps 10
    python benchmarks/mllm_step.py --image-pos        # with the tiny recipe's learned feature places (image_pos)
"""
import argparse, json, platform

import torch
from _timing import alternate

from puma_nb.mllm import Image, MLLMConfig, Text, build_mllm, build_sequence, collate_sequences, flatten_pyramid, tiny_tokenizer
from puma_nb.mllm_loss import puma_loss
from puma_nb.pyramid import SCALES


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--image-pos", action="store_true", help="MLLMConfig.image_pos, as configs/toy/pretrain.yaml")
    args = ap.parse_args()
    torch.manual_seed(0)
    tok, cfg = tiny_tokenizer(), MLLMConfig(image_pos=args.image_pos)
    ours = build_mllm(cfg, tok)
    plain = build_mllm(cfg, tok).llm  # an identical Llama, without PUMA's projectors and loss
    seqs = [build_sequence(tok, [Text("a large red circle at the top left on a white background"),
                                 Image(flatten_pyramid([torch.randn(n, cfg.feature_dim) for n in SCALES]), target=True)])
            for _ in range(args.batch)]
    batch = collate_sequences(seqs, tok.pad_token_id)
    ids = batch["input_ids"]
    opt_a, opt_b = torch.optim.AdamW(ours.parameters(), 1e-4), torch.optim.AdamW(plain.parameters(), 1e-4)

    def step_ours():
        loss, _ = puma_loss(ours, batch)
        opt_a.zero_grad(set_to_none=True); loss.backward(); opt_a.step()

    def step_plain():
        loss = plain(input_ids=ids, attention_mask=batch["attention_mask"], labels=ids).loss
        opt_b.zero_grad(set_to_none=True); loss.backward(); opt_b.step()

    med = alternate({"ours": step_ours, "plain": step_plain}, args.warmup, args.steps)
    print(json.dumps({"benchmark": "MLLM training step vs plain transformers Llama step", "device": "cpu",
                      "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "batch": args.batch, "seq_len": ids.shape[1], "image_pos": args.image_pos,
                      "params_M": round(sum(p.numel() for p in plain.parameters()) / 1e6, 2),
                      "ours_s_per_step": round(med["ours"], 4), "plain_s_per_step": round(med["plain"], 4),
                      "ratio": round(med["ours"] / med["plain"], 3)}, indent=1))


if __name__ == "__main__":
    main()
