"""How the MLLM's generated features differ from the encoder's, and what a decoder makes of them (04_decoder, *Decoding what
the MLLM writes*). For the first `--n` held-out examples of text-to-image, editing and conditional generation, the run's
instruct models generate their pyramids once; the script prints, per task and scale, the error of f̂_i against the target's
f_i (relative to f_i's variance) and the detail a token adds to its parent, ‖f̂_i − ↑f̂_{i+1}‖², as a fraction of the real
detail; then it decodes, with each decoder folder given, the text-to-image f_0 of the encoder, its parent ↑f_1, f_0 plus
noise of f̂_0's error, and the generated f̂_0 (and ↑f̂_1), and each task's f̂_i, and scores them with the exact parser.
The last line is JSON.

    python experiments/decoder_generated_features.py --run runs/toy22 --decoders runs/toy22/decoders runs/toy23/decoders

`--scales 0 1 2` picks the decoders scored on each task's f̂_i (DDIM 20, guidance 1, seed 0, as the main job decodes)."""
import argparse, json
from pathlib import Path

import numpy as np
import torch

from puma_nb import toyworld as tw
from puma_nb.decoder import decode_features, load_decoders, null_features, upsample_tokens
from puma_nb.instruct import InstructData, conditional_right, generate_pyramids, scene_survival
from puma_nb.mllm import load_mllm
from puma_nb.pyramid import SCALES, load_encoder, pyramid

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/toy", help="a main-job run folder: its clip/model and instruct/{t2i,edit,conditional}/model")
ap.add_argument("--decoders", nargs="+", default=None, help="decoder folders (unet_1 … unet_256); default: the run's")
ap.add_argument("--scales", nargs="+", type=int, default=[0], help="the scales whose decoders read each task's f̂_i")
ap.add_argument("--n", type=int, default=100, help="held-out examples per task")
ap.add_argument("--steps", type=int, default=20, help="DDIM steps per decoding")
args = ap.parse_args()
run = Path(args.run)
enc = load_encoder(str(run / "clip" / "model"))
TASKS = ("t2i", "edit", "conditional")
items, f, f_hat = {}, {}, {}
for task in TASKS:
    items[task] = [InstructData(task, args.n, "test", 0)[k] for k in range(args.n)]
    model, tok, _ = load_mllm(run / "instruct" / task / "model")
    with torch.no_grad():
        f_hat[task] = generate_pyramids(model, tok, enc, items[task], 0)
        f[task] = pyramid(enc(torch.stack([it["image"] for it in items[task]])))
features = {}
for task in TASKS:
    rows = {}
    for i in range(len(SCALES)):
        var = ((f[task][i] - f[task][i].mean((0, 1))) ** 2).sum()
        rows[f"f{i}"] = {"relative_error": round((((f_hat[task][i] - f[task][i]) ** 2).sum() / var).item(), 3)}
        if i + 1 < len(SCALES):
            detail = lambda fs: ((fs[i] - upsample_tokens(fs[i + 1])) ** 2).sum()
            rows[f"f{i}"]["detail_kept"] = round((detail(f_hat[task]) / detail(f[task])).item(), 3)
    features[task] = rows
    print(task, rows, flush=True)

def score(task, y) -> dict:
    "Exact scores in %: text-to-image and edits by attribute and whole scene, conditional generation by kind."
    sv = scene_survival(items[task], y)
    if task == "conditional":
        right = [conditional_right(it, im, s) for it, im, s in zip(items[task], y, sv)]
        return {k: round(100 * float(np.mean([r for r, it in zip(right, items[task]) if it["kind"] == k]))) for k in tw.CONDITION_KINDS}
    return {k: round(100 * float(np.mean([r[k] for r in sv]))) for k in ("color", "shape", "position", "scene")}

f0, g = f["t2i"][0], torch.Generator().manual_seed(0)
err = ((f_hat["t2i"][0] - f0) ** 2).sum() / f0.numel()  # f̂_0's squared error per number
probes = {"encoder f0": f0, "its parent ↑f1": upsample_tokens(f["t2i"][1]), "f0 + noise of f̂0's error": f0 + err.sqrt() * torch.randn(f0.shape, generator=g),
          "generated f̂0": f_hat["t2i"][0], "↑f̂1": upsample_tokens(f_hat["t2i"][1])}
decoded = {}
for folder in args.decoders or [run / "decoders"]:
    Ds, res = load_decoders(folder), {"t2i f0 inputs": {}, "generated": {}}
    dec = lambda i, x: decode_features(Ds[i], x, null_features(enc, i, tw.SIZE), seed=0, steps=args.steps, guidance=1.0, scheduler="ddim")
    for name, x in probes.items():
        res["t2i f0 inputs"][name] = score("t2i", dec(0, x))
    for i in args.scales:
        res["generated"][f"f{i}"] = {task: score(task, dec(i, f_hat[task][i])) for task in TASKS}
    decoded[str(folder)] = res
    print(folder, res, flush=True)
print(json.dumps({"run": str(run), "n": args.n, "features": features, "decoded": decoded}))
