"""Does one token say which shape its object is? The understanding model gathers tokens by attention, a weighted *sum*,
so "what shape is the red object?" needs the shape in the tokens over the red object one by one, not only in their
arrangement. For a tiny CLIP, on held-out pictures: a ridge probe from the single f_i token at each object's centre to
its shape (f0, f1, f2), and how often the CLIP's image embedding prefers the true caption to the same caption with one
object's shape (colour, size, position) changed, as `toyworld.sample_edit` changes it. Cited in 03_pyramid and 08_instruct.

    python experiments/clip_token_shape.py --clip runs/toy/clip/model
    python experiments/clip_token_shape.py --train plain --out runs/clip_plain    # a trial CLIP, then the same probes

`--train` trains a tiny CLIP by configs/toy/clip.yaml (the caption loss and the token loss L_dense, 03_pyramid) with one change:
- `recipe`: none;
- `plain`: the caption loss alone (`dense_weight=0`, the recipe before);
- `hard_negatives`: the caption loss alone plus NegCLIP's extra texts; each picture's caption with one object's shape
  changed joins the image→text softmax.
Prints JSON: the centre-token shape accuracy per scale (chance 1/3) and the changed-caption preference per attribute."""
import argparse, json
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from puma_nb import pyramid as P, toyworld as tw
from puma_nb.config import load_config

ap = argparse.ArgumentParser()
ap.add_argument("--clip", default="runs/toy/clip/model", help="a tiny CLIP folder to probe (ignored with --train)")
ap.add_argument("--train", choices=["recipe", "plain", "hard_negatives"], default=None, help="train a trial CLIP first")
ap.add_argument("--out", default="runs/clip_trial", help="with --train: its run folder (the model lands in <out>/model)")
ap.add_argument("--steps", type=int, default=None, help="with --train: steps (default: the recipe's)")
ap.add_argument("--train-n", type=int, default=3000, help="probe: training pictures")
ap.add_argument("--test-n", type=int, default=500, help="probe: held-out pictures")
args = ap.parse_args()
G = 16  # the f0 grid

EDIT_OF = {"shape": "replace_shape", "color": "recolor", "size": "resize", "position": "move"}

def swapped(scene:tw.Scene, attr:str, rng:np.random.Generator) -> tw.Scene:
    "The scene with one object's `attr` changed (`toyworld.sample_edit`'s edit of that kind)."
    return tw.sample_edit(scene, rng, EDIT_OF[attr]).target

def hard_negative_loss_fn(mcfg, dense_weight=0.0):
    "NegCLIP: `clip_loss_fn` in its signature (`dense_weight` unused: no token loss), each caption's shape-changed twin among the image→text negatives."
    tok, rng = P.tokenizer(mcfg), np.random.default_rng(0)
    def loss_fn(model, batch):
        scenes = [tw.Scene.from_dict(d) for d in batch["scene"]]
        caps = list(batch["caption"]) + [tw.caption(swapped(s, "shape", rng)) for s in scenes]
        o = model(batch["image"], tok(caps).to(batch["image"].device))
        I, T, s = o["image_features"], o["text_features"], o["logit_scale"]
        y = torch.arange(len(I), device=I.device)
        return (F.cross_entropy(s * I @ T.T, y) + F.cross_entropy(s * T[:len(I)] @ I.T, y)) / 2, {"logit_scale": s.detach()}
    return loss_fn

if args.train:
    cfg = load_config(P.ClipRunConfig, "configs/toy/clip.yaml", [f"train.out_dir={args.out}"])
    if args.steps: cfg.train = replace(cfg.train, steps=args.steps, warmup_steps=min(cfg.train.warmup_steps, args.steps // 10))
    if args.train != "recipe": cfg.dense_weight = 0.0
    if args.train == "hard_negatives": P.clip_loss_fn = hard_negative_loss_fn  # train_clip calls it by this name
    P.train_clip(cfg)
    args.clip = f"{args.out}/model"

model, cfg = P.load_clip(args.clip); model.eval()
enc, tok = P.tiny_encoder(model, cfg), P.tokenizer(cfg)

@torch.no_grad()
def centre_tokens(split:str, n:int):
    "Per scale 0-2, the f_i token at each object's centre, and the objects' shapes."
    ds = tw.ShapesWorld(split, n, "caption", 0); scenes = [ds.scene(i) for i in range(n)]
    x = torch.stack([tw.to_tensor(tw.render(s)) for s in scenes])
    fs = [torch.cat(z) for z in zip(*(P.pyramid(enc(x[i:i + 250])) for i in range(0, n, 250)))]
    X, y = {i: [] for i in (0, 1, 2)}, []
    for b, s in enumerate(scenes):
        for o in s.objects:
            cx, cy = tw.cell_center(o.position)
            for i in X:
                g = G >> i
                X[i].append(fs[i][b].reshape(g, g, -1)[cy // (tw.SIZE // g), cx // (tw.SIZE // g)])
            y.append(tw.SHAPES.index(o.shape))
    return {i: torch.stack(v).double() for i, v in X.items()}, torch.tensor(y), scenes, x

Xtr, ytr, _, _ = centre_tokens("train", args.train_n)
Xte, yte, scenes, x = centre_tokens("test", args.test_n)
Y, res = F.one_hot(ytr, 3).double(), {"clip": args.clip, "objects": len(yte), "chance": round(1 / 3, 4)}
for i in Xtr:
    mu, sd = Xtr[i].mean(0), Xtr[i].std(0) + 1e-6
    A, B = [torch.cat([(z - mu) / sd, torch.ones(len(z), 1, dtype=z.dtype)], 1) for z in (Xtr[i], Xte[i])]
    W = torch.linalg.solve(A.T @ A + torch.eye(A.shape[1], dtype=A.dtype), A.T @ Y)
    res[f"centre_token_shape_f{i}"] = round(float(((B @ W).argmax(1) == yte).float().mean()), 4)
with torch.no_grad():
    o = P.TrainableCLIP(model, cfg.image_size)(x, tok([tw.caption(s) for s in scenes]))
    I, T = o["image_features"], o["text_features"]
    rng = np.random.default_rng(1)
    for attr in ("shape", "color", "size", "position"):
        N = model.encode_text(tok([tw.caption(swapped(s, attr, rng)) for s in scenes]), normalize=True)
        res[f"prefers_true_caption_{attr}"] = round(float(((I * T).sum(-1) > (I * N).sum(-1)).float().mean()), 4)
print(json.dumps(res))
