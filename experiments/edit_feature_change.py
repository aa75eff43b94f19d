"""How much an edit changes the encoder's f_i tokens: for held-out ShapesWorld edits, the mean squared difference between
the source's and the target's tokens, per edit kind, against the spread of the target's tokens about their mean. If the
encoder's tokens were local, an edit of one object would change only the tokens over it, and copying the source would be
a strong start for the target; cited in 08_instruct.

    python experiments/edit_feature_change.py --clip runs/toy/clip/model [--clip runs/clip_pool/tok/model] [--n 300] [--scale 0]
    python experiments/edit_feature_change.py --clip runs/toy/clip/model --layer 1   # the tokens after the tower's first block

Prints JSON per encoder: per kind, the copy-the-source MSE, the median token's, and the share of tokens whose change is
more than a tenth of the tokens' variance; and the MSE of predicting every token as the targets' mean token (that variance)."""
import argparse, collections, json

import torch

from puma_nb.instruct import InstructData
from puma_nb.pyramid import load_encoder, pyramid

ap = argparse.ArgumentParser()
ap.add_argument("--clip", action="append", required=True, help="a tiny CLIP folder (repeat to compare encoders)")
ap.add_argument("--n", type=int, default=300, help="held-out edits")
ap.add_argument("--scale", type=int, default=0)
ap.add_argument("--layer", type=int, default=0, help="the tower block whose tokens are f0 (1 = the first); 0 = the last, as the pyramid")
args = ap.parse_args()
items = [InstructData("edit", args.n, "test", 0)[k] for k in range(args.n)]
for folder in args.clip:
    enc = load_encoder(folder)
    blocks = len(enc.visual.transformer.resblocks)
    def f0(x):  # the pyramid's f0 (the last block's tokens), or an earlier block's
        if not args.layer: return enc(x)
        out = enc.visual.forward_intermediates(enc.preprocess(x), indices=blocks, intermediates_only=True, output_fmt="NLC")
        return out["image_intermediates"][args.layer - 1]
    with torch.no_grad():
        fs = pyramid(f0(torch.stack([it["source"] for it in items])))[args.scale]
        ft = pyramid(f0(torch.stack([it["image"] for it in items])))[args.scale]
    d = ((fs - ft) ** 2).mean(-1)  # (n, tokens): each token's change
    var = float(((ft - ft.mean((0, 1))) ** 2).mean())
    by = collections.defaultdict(list)
    for it, row in zip(items, d): by[it["kind"]].append(row)
    by = {k: torch.stack(r) for k, r in sorted(by.items())}
    kinds = {k: {"n": len(r), "copy_mse": round(float(r.mean()), 3), "median_token": round(float(r.median()), 3),
                 "tokens_changed": round(float((r > 0.1 * var).float().mean()), 3)} for k, r in by.items()}
    print(json.dumps({"encoder": folder, "layer": args.layer or blocks, "scale": args.scale, "n": args.n, "copy_mse": round(float(d.mean()), 3),
                      "mean_token_mse": round(var, 3), "per_kind": kinds}))
