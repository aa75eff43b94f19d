"""Does a feature token know where it is? A ridge probe from one token's feature alone (no position input) to its place
on the grid, fitted on training pictures and scored on held-out ones, for f0 (16×16) and f1 (8×8) of a tiny CLIP.
Cited in 08_instruct: the features carry their place, so the MLLM's failure on position questions is not the encoder's.

    python experiments/feature_place_probe.py [--clip runs/toy/clip/model] [--train 3000] [--test 500]

Prints JSON per scale: exact place, place within one grid cell, and exact place over objects / over background."""
import argparse, json

import torch
import torch.nn.functional as F

from puma_nb import toyworld as tw
from puma_nb.pyramid import load_encoder, pyramid

ap = argparse.ArgumentParser()
ap.add_argument("--clip", default="runs/toy/clip/model", help="a tiny CLIP folder (the main job's clip/model)")
ap.add_argument("--train", type=int, default=3000)
ap.add_argument("--test", type=int, default=500)
args = ap.parse_args()
enc = load_encoder(args.clip)

@torch.no_grad()
def pictures(split:str, n:int):
    ds = tw.ShapesWorld(split, n, "caption", 0)
    x = torch.stack([ds[i]["image"] for i in range(n)])
    background = torch.tensor([tw.BACKGROUNDS[tw.Scene.from_dict(ds[i]["scene"]).background] for i in range(n)]).float() / 255
    objects = ((x - background[:, :, None, None]).abs().sum(1) > 0.1).float()  # (B, 64, 64): pixels off the background
    return pyramid(enc(x)), objects

(f_train, _), (f_test, objects) = pictures("train", args.train), pictures("test", args.test)
out = {}
for i in (0, 1):
    B, n, C = f_train[i].shape
    g = int(n ** 0.5)
    X = torch.cat([f_train[i].reshape(-1, C), torch.ones(B * n, 1)], 1)
    W = torch.linalg.solve(X.T @ X + 1e-2 * torch.eye(C + 1), X.T @ torch.eye(n).repeat(B, 1))  # ridge to the one-hot place
    Xt = torch.cat([f_test[i].reshape(-1, C), torch.ones(args.test * n, 1)], 1)
    place, true = (Xt @ W).argmax(1), torch.arange(n).repeat(args.test)
    near = ((place // g - true // g).abs() <= 1) & ((place % g - true % g).abs() <= 1)
    over = (F.avg_pool2d(objects[:, None], 64 // g)[:, 0].reshape(-1) > 0.2)  # tokens whose window is >20% object
    right = place == true
    out[f"f{i}"] = {"exact": round(right.float().mean().item(), 3), "within_one": round(near.float().mean().item(), 3),
                    "over_objects": round(right[over].float().mean().item(), 3), "over_background": round(right[~over].float().mean().item(), 3),
                    "chance": round(1 / n, 4)}
print(json.dumps(out))
