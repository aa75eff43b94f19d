"""Does D_0 read its tokens locally? For held-out ShapesWorld edits, build an f0 that is the *source's*, with the *target's*
tokens pasted only over the pixels the edit changed (the 4×4-pixel patches that differ, optionally dilated by whole tokens),
decode it with D_0 and ask the exact parser whether the picture is the target scene. Against it: the target's own f0 (the
ceiling) and the source's (the copy). If the pasted f0 decodes as well as the target's, an edit needs only the changed tokens
right, however much an encoder with global attention changes the others (experiments/edit_feature_change.py). Cited in 03_pyramid.

    python experiments/edit_local_patch.py --run runs/toy [--n 200] [--dilate 0,1]

`--run` is a main-job folder (its clip/model and decoders/unet_256). Prints one JSON line per f0: the share of tokens pasted,
edit success, and success per edit kind."""
import argparse, collections, json

import torch
import torch.nn.functional as F

from puma_nb import toyworld as tw
from puma_nb.parser import parse
from puma_nb.decoder import decode_features, load_puma_decoder, null_features
from puma_nb.instruct import InstructData
from puma_nb.pyramid import load_encoder

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/toy", help="a `puma-nb toy` folder")
ap.add_argument("--n", type=int, default=200, help="held-out edits (the first n)")
ap.add_argument("--dilate", default="0,1", help="grow the pasted region by this many tokens (comma-separated)")
args = ap.parse_args()
items = [InstructData("edit", args.n, "test", 0)[k] for k in range(args.n)]
enc = load_encoder(f"{args.run}/clip/model")
D0 = load_puma_decoder(f"{args.run}/decoders/unet_256").eval()
xs, xt = torch.stack([it["source"] for it in items]), torch.stack([it["image"] for it in items])
with torch.no_grad(): fs, ft = enc(xs), enc(xt)
f_null = null_features(enc, 0)
changed = F.max_pool2d(((xs - xt).abs().sum(1, keepdim=True) > 0.05).float(), tw.SIZE // 16)  # (n, 1, 16, 16): tokens over changed pixels

def score(f0, name, pasted=None):
    y = decode_features(D0, f0, f_null, seed=0, steps=20, guidance=1.0)
    ok, n = collections.Counter(), collections.Counter()
    for it, im in zip(items, y):
        ok[it["kind"]] += parse(tw.to_image(im)).scene == tw.Scene.from_dict(it["scene"]); n[it["kind"]] += 1
    print(json.dumps({"f0": name, "tokens_pasted": pasted, "edit_success": round(sum(ok.values()) / len(items), 3),
                      "per_kind": {k: f"{ok[k]}/{n[k]}" for k in sorted(n)}}), flush=True)

for d in (int(s) for s in args.dilate.split(",")):
    m = (F.max_pool2d(changed, 2 * d + 1, 1, d) if d else changed).flatten(1)[:, :, None]  # (n, 256, 1)
    score(m * ft + (1 - m) * fs, f"source, target pasted over the change (dilated {d})", round(float(m.mean()), 3))
score(ft, "target (ceiling)", 1.0)
score(fs, "source (copy)", 0.0)
