"""How much of each picture can be read straight off its f0 tokens? A small network regresses the clean patch-space
latent (16×16×48, `PatchSpace`) from the f0 grid (16×16×C) with MSE, no diffusion, no noise; its output is then
scored like a decoding (PSNR_r and the parser's survival rates). Cited in 04_decoder: a per-token MLP reads every shape,
a per-token linear map does not, which is why the tiny decoders read f_i with an MLP.

    python experiments/patch_regression_probe.py [--clip runs/toy/clip/model] [--readers linear,mlp,conv] [--steps 1500]

Readers: `linear` (one Linear per token, the tiny decoders' map before), `mlp` (Linear 256, SiLU, Linear: per token),
`conv` (3×3 conv 128, SiLU, 3×3 conv 128, SiLU, 1×1: each token with its neighbours). Prints one JSON line per reader."""
import argparse, json, time

import torch
import torch.nn as nn
import torch.nn.functional as F

from puma_nb import toyworld as tw
from puma_nb.decoder import PatchSpace
from puma_nb.pyramid import load_encoder
from puma_nb.reconstruction import psnr, survival_rates

ap = argparse.ArgumentParser()
ap.add_argument("--clip", default="runs/toy/clip/model", help="a tiny CLIP folder (the main job's clip/model)")
ap.add_argument("--readers", default="linear,mlp,conv")
ap.add_argument("--train", type=int, default=8000, help="training pictures")
ap.add_argument("--test", type=int, default=100, help="held-out pictures scored")
ap.add_argument("--steps", type=int, default=1500)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--lr", type=float, default=3e-3, help="AdamW, decayed linearly to 0")
args = ap.parse_args()
enc, space = load_encoder(args.clip), PatchSpace(4)


@torch.no_grad()
def pictures(split:str, n:int):
    "Scenes, pictures (n, 3, 64, 64) and their f0 grids (n, C, 16, 16)."
    ds = tw.ShapesWorld(split, n, "caption", 0)
    scenes = [ds.scene(i) for i in range(n)]
    x = torch.stack([tw.to_tensor(tw.render(s)) for s in scenes])
    f0 = torch.cat([enc(x[b:b + 500]) for b in range(0, n, 500)])
    return scenes, x, f0.transpose(1, 2).reshape(n, -1, 16, 16)


def reader(kind:str, C:int) -> nn.Module:
    if kind == "linear": return nn.Conv2d(C, 48, 1)
    if kind == "mlp": return nn.Sequential(nn.Conv2d(C, 256, 1), nn.SiLU(), nn.Conv2d(256, 48, 1))
    if kind == "conv": return nn.Sequential(nn.Conv2d(C, 128, 3, padding=1), nn.SiLU(), nn.Conv2d(128, 128, 3, padding=1), nn.SiLU(),
                                            nn.Conv2d(128, 48, 1))
    raise SystemExit(f"unknown reader {kind!r}: linear, mlp or conv")


_, x_tr, f_tr = pictures("train", args.train)
scenes, x_te, f_te = pictures("test", args.test)
z_tr = space.encode(x_tr)
for kind in args.readers.split(","):
    torch.manual_seed(0)
    net = reader(kind, f_tr.shape[1])
    opt = torch.optim.AdamW(net.parameters(), args.lr)
    t = time.time()
    for s in range(args.steps):
        for g in opt.param_groups: g["lr"] = args.lr * (1 - s / args.steps)
        i = torch.randint(0, args.train, (args.batch,))
        loss = F.mse_loss(net(f_tr[i]), z_tr[i])
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad(): y = space.decode(net(f_te).clamp(-1, 1)).clamp(0, 1)
    print(json.dumps({"reader": kind, "steps": args.steps, "batch": args.batch, "train_seconds": round(time.time() - t, 1),
                      "psnr_r": round(float(psnr(x_te, y).mean()), 2),
                      **{k: round(v, 4) for k, v in survival_rates(scenes, y).items()}}))
