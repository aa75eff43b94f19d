"""Does one token say which shape its object is? The understanding model gathers tokens by attention, a weighted *sum*,
so "what shape is the red object?" needs the shape in the tokens over the red object one by one, not only in their
arrangement. For a tiny CLIP, on held-out pictures: a ridge probe from the single f_i token at each object's centre to
its shape (f0, f1, f2), and how often the CLIP's image embedding prefers the true caption to the same caption with one
object's shape (colour, size, position) swapped. Cited in 08_instruct.

    python benchmarks/clip_token_shape.py --clip runs/toy/clip/model
    python benchmarks/clip_token_shape.py --train hard_negatives --out runs/clip_hn    # a trial CLIP, then the same probes
    python benchmarks/clip_token_shape.py --train dense --out runs/clip_dense

`--train` trains a tiny CLIP by configs/clip_tiny.yaml with one change, then probes it:
- `hard_negatives`: NegCLIP's extra texts; each picture's caption with one object's shape swapped joins the image→text softmax;
- `dense`: a second loss on the patch tokens; each token (through ln_post and the projection) is contrasted against the
  phrases of the batch: "a large red circle" for a token a quarter covered by that object, "a white background" for one
  over nothing (tokens an object only grazes are left out).
Prints JSON: the centre-token shape accuracy per scale (chance 1/3) and the swapped-caption preference per attribute."""
import argparse, json, random
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from puma_nb import pyramid as P, toyworld as tw
from puma_nb.config import load_config

ap = argparse.ArgumentParser()
ap.add_argument("--clip", default="runs/toy/clip/model", help="a tiny CLIP folder to probe (ignored with --train)")
ap.add_argument("--train", choices=["hard_negatives", "dense"], default=None, help="train a trial CLIP first")
ap.add_argument("--out", default="runs/clip_trial", help="with --train: its run folder (the model lands in <out>/model)")
ap.add_argument("--steps", type=int, default=None, help="with --train: steps (default: the recipe's)")
ap.add_argument("--train-n", type=int, default=3000, help="probe: training pictures")
ap.add_argument("--test-n", type=int, default=500, help="probe: held-out pictures")
args = ap.parse_args()
G, PX = 16, tw.SIZE // 16  # the f0 grid and its pixels per token

def swapped(scene:tw.Scene, attr:str, rng:random.Random) -> tw.Scene:
    "The scene with one object's `attr` changed to another allowed value (a position no other object holds)."
    k = rng.randrange(len(scene.objects)); o = scene.objects[k]
    pool = {"shape": tw.SHAPES, "color": tuple(tw.COLORS), "size": tuple(tw.SIZES), "position": tw.POSITIONS}[attr]
    taken = {p.position for p in scene.objects} if attr == "position" else set()
    objs = list(scene.objects); objs[k] = tw.Obj(**{**o.to_dict(), attr: rng.choice([v for v in pool if v != getattr(o, attr) and v not in taken])})
    return tw.Scene(scene.background, tuple(objs))

def token_phrases(scene:tw.Scene, phrases:dict) -> torch.Tensor:
    "Each f0 token's phrase index in `phrases` (added as met): its object's, the background's, or -100 where an object only grazes it."
    lab = np.full((G, G), phrases.setdefault(f"a {scene.background} background", len(phrases)))
    for o in scene.objects:
        cover = tw.shape_mask(o.shape, o.size, o.position).reshape(G, PX, G, PX).sum((1, 3))
        lab[cover >= PX * PX // 4] = phrases.setdefault(f"a {o.size} {o.color} {o.shape}", len(phrases))
        lab[(cover > 0) & (cover < PX * PX // 4)] = -100
    return torch.from_numpy(lab.reshape(-1)).long()

def trial_loss_fn(kind:str):
    "`clip_loss_fn` with the trial's change, in its signature (`P.clip_loss_fn` is swapped for it before `train_clip`)."
    plain, rng = P.clip_loss_fn, random.Random(0)
    def make(mcfg):
        tok, base = P.tokenizer(mcfg), plain(mcfg)
        def loss_fn(model, batch):
            scenes = [tw.Scene.from_dict(d) for d in batch["scene"]]
            if kind == "hard_negatives":
                caps = list(batch["caption"]) + [tw.caption(swapped(s, "shape", rng)) for s in scenes]
                o = model(batch["image"], tok(caps).to(batch["image"].device))
                I, T, s = o["image_features"], o["text_features"], o["logit_scale"]
                y = torch.arange(len(I), device=I.device)
                return (F.cross_entropy(s * I @ T.T, y) + F.cross_entropy(s * T[:len(I)] @ I.T, y)) / 2, {"logit_scale": s.detach()}
            loss, logs = base(model, batch)
            phrases = {}
            y = torch.stack([token_phrases(s, phrases) for s in scenes]).flatten().to(batch["image"].device)
            v = model.clip.visual
            x = v.forward_intermediates(P.clip_preprocess(batch["image"], model.size, model.mean, model.std), indices=1,
                                        intermediates_only=True, output_fmt="NLC")["image_intermediates"][0]
            t = F.normalize(v.ln_post(x) @ v.proj, dim=-1).flatten(0, 1)
            ce = F.cross_entropy(model.clip.logit_scale.exp() * t @ model.clip.encode_text(tok(list(phrases)).to(t.device), normalize=True).T,
                                 y.clamp_min(0), reduction="none")
            bg = torch.tensor([p.endswith("background") for p in phrases], device=y.device)[y.clamp_min(0)] & (y >= 0)
            dense = (ce[bg].mean() + ce[~bg & (y >= 0)].mean()) / 2  # background and object tokens weigh alike
            return loss + dense, {**logs, "dense": dense.detach()}
        return loss_fn
    return make

if args.train:
    cfg = load_config(P.ClipRunConfig, "configs/clip_tiny.yaml", [f"train.out_dir={args.out}"])
    if args.steps: cfg.train = replace(cfg.train, steps=args.steps, warmup_steps=min(cfg.train.warmup_steps, args.steps // 10))
    P.clip_loss_fn = trial_loss_fn(args.train)
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
    I = P.TrainableCLIP(model, cfg.image_size)(x, tok([tw.caption(s) for s in scenes]))["image_features"]
    T = model.encode_text(tok([tw.caption(s) for s in scenes]), normalize=True)
    rng = random.Random(1)
    for attr in ("shape", "color", "size", "position"):
        N = model.encode_text(tok([tw.caption(swapped(s, attr, rng)) for s in scenes]), normalize=True)
        res[f"prefers_true_caption_{attr}"] = round(float(((I * T).sum(-1) > (I * N).sum(-1)).float().mean()), 4)
print(json.dumps(res))
