"""Do the f0 tokens over an object know its shape? A ridge probe from the f0 tokens of an object's cell window
(6×6 tokens, flattened) to its shape, fitted on training pictures and scored on held-out ones, split by size.
Cited in 04_decoder: small circles and squares that D_0 confuses are told apart by the features.

    python experiments/object_shape_probe.py [--clip runs/toy/clip/model] [--train 3000] [--test 500]

Prints JSON: shape accuracy over all objects, small ones and large ones, with chance."""
import argparse, json

import torch

from puma_nb import toyworld as tw
from puma_nb.pyramid import load_encoder

ap = argparse.ArgumentParser()
ap.add_argument("--clip", default="runs/toy/clip/model", help="a tiny CLIP folder (the main job's clip/model)")
ap.add_argument("--train", type=int, default=3000)
ap.add_argument("--test", type=int, default=500)
ap.add_argument("--ridge", type=float, default=1.0)
args = ap.parse_args()
enc = load_encoder(args.clip)
cell = tw.SIZE // 16  # pixels per f0 token

@torch.no_grad()
def objects(split:str, n:int):
    "Per object: the f0 tokens over its cell window (flattened), its shape index, whether it is small."
    ds = tw.ShapesWorld(split, n, "caption", 0)
    scenes = [ds.scene(i) for i in range(n)]
    x = torch.stack([tw.to_tensor(tw.render(s)) for s in scenes])
    f0 = torch.cat([enc(x[b:b + 200]) for b in range(0, n, 200)])
    f0 = f0.reshape(n, 16, 16, -1)
    X, y, small = [], [], []
    for s, f in zip(scenes, f0):
        for o in s.objects:
            rows, cols = tw.cell_window(o.position)  # the 18×18 pixel window → the tokens it touches
            X.append(f[rows.start // cell:(rows.stop - 1) // cell + 1, cols.start // cell:(cols.stop - 1) // cell + 1].flatten())
            y.append(tw.SHAPES.index(o.shape)); small.append(o.size == "small")
    return torch.stack(X), torch.tensor(y), torch.tensor(small)

(X, y, _), (Xt, yt, small) = objects("train", args.train), objects("test", args.test)
mu, sd = X.mean(0), X.std(0) + 1e-6
A, At = (X - mu) / sd, (Xt - mu) / sd
W = torch.linalg.solve(A.T @ A + args.ridge * torch.eye(A.shape[1]), A.T @ torch.eye(len(tw.SHAPES))[y])
ok = ((At @ W).argmax(1) == yt).float()
print(json.dumps({"objects": len(yt), "tokens_per_object": X.shape[1] // enc.width, "all": round(ok.mean().item(), 4),
                  "small": round(ok[small].mean().item(), 4), "large": round(ok[~small].mean().item(), 4),
                  "chance": round(1 / len(tw.SHAPES), 4)}))
