"""How much an edit changes the encoder's f_i tokens: for held-out ShapesWorld edits, the mean squared difference between
the source's and the target's tokens, per edit kind, against the spread of the target's tokens about their mean. If the
encoder's tokens were local, an edit of one object would change only the tokens over it, and copying the source would be
a strong start for the target; cited in 08_instruct.

    python benchmarks/edit_feature_change.py --clip runs/toy/clip/model [--clip runs/clip_pool/tok/model] [--n 300] [--scale 0]

Prints JSON per encoder: per kind, the copy-the-source MSE, the median token's, and the share of tokens changed by more
than 0.1 (per element); and the MSE of predicting every token as the targets' mean token."""
import argparse, collections, json

import torch

from puma_nb.instruct import InstructData
from puma_nb.pyramid import load_encoder, pyramid

ap = argparse.ArgumentParser()
ap.add_argument("--clip", action="append", required=True, help="a tiny CLIP folder (repeat to compare encoders)")
ap.add_argument("--n", type=int, default=300, help="held-out edits")
ap.add_argument("--scale", type=int, default=0)
args = ap.parse_args()
items = [InstructData("edit", args.n, "test", 0)[k] for k in range(args.n)]
for folder in args.clip:
    enc = load_encoder(folder)
    with torch.no_grad():
        fs = pyramid(enc(torch.stack([it["source"] for it in items])))[args.scale]
        ft = pyramid(enc(torch.stack([it["image"] for it in items])))[args.scale]
    d = ((fs - ft) ** 2).mean(-1)  # (n, tokens): each token's change
    by = collections.defaultdict(list)
    for it, row in zip(items, d): by[it["kind"]].append(row)
    kinds = {k: {"n": len(r), "copy_mse": round(float(torch.stack(r).mean()), 3), "median_token": round(float(torch.stack(r).median()), 3),
                 "tokens_changed": round(float((torch.stack(r) > 0.1).float().mean()), 3)} for k, r in sorted(by.items())}
    print(json.dumps({"encoder": folder, "scale": args.scale, "n": args.n, "copy_mse": round(float(d.mean()), 3),
                      "mean_token_mse": round(float(((ft - ft.mean((0, 1))) ** 2).mean()), 3), "per_kind": kinds}))
