"""How much of a text-to-image model's f_0 is lost to its own earlier tokens? Decodes f̂_0 written four ways and scores
each with the exact parser (D_0 of a run folder, DDIM 20, guidance 1, as the main job): teacher-forced (every earlier
token the encoder's: Eq. 2 as trained), after 1 and 2 `self_feed` passes (earlier tokens the model's own, 1 or 2 deep:
what `self_feed` trains on), and free-running (generation). 100 held-out captions, one seed.

    python experiments/t2i_forced_shape.py --clip runs/toy/clip/model --decoder runs/toy/decoders/unet_256 --model runs/toy/instruct/t2i/model
"""
import argparse, json
import numpy as np
import torch
from puma_nb.decoder import decode_features, load_puma_decoder, null_features
from puma_nb.instruct import InstructData, generate_pyramids, scene_survival
from puma_nb.mllm import load_mllm
from puma_nb.mllm_loss import parent_features, self_feed_inputs, t2i_collate
from puma_nb.pyramid import load_encoder

ap = argparse.ArgumentParser()
ap.add_argument("--clip", required=True, help="the run's CLIP folder (clip/model)")
ap.add_argument("--decoder", required=True, help="D_0's folder (decoders/unet_256)")
ap.add_argument("--model", action="append", required=True, help="a text-to-image model folder (repeat to compare several)")
ap.add_argument("--n", type=int, default=100, help="held-out captions")
ap.add_argument("--steps", type=int, default=20, help="DDIM steps")
args = ap.parse_args()
enc, D0 = load_encoder(args.clip), load_puma_decoder(args.decoder).eval()
items = [InstructData("t2i", args.n, "test", 0)[k] for k in range(args.n)]
null = null_features(enc, 0, 64)

def scores(f0: torch.Tensor, target: torch.Tensor) -> dict:
    "The parser's scores of f̂_0 decoded by D_0, and its MSE to the encoder's f_0."
    surv = scene_survival(items, decode_features(D0, f0, null, seed=0, steps=args.steps, guidance=1.0, scheduler="ddim"))
    return {**{k: round(float(np.mean([r[k] for r in surv])), 3) for k in ("color", "shape", "position", "scene")},
            "mse_f0": round(float(((f0 - target) ** 2).mean()), 3)}

out = {}
for path in args.model:
    m, tok, _ = load_mllm(path); m.eval()
    batch = t2i_collate(enc, tok)(items)
    ids, f, k = batch["input_ids"], batch["features"], batch["feature_index"]
    fb, fp = (ids == m.feat_token_id).nonzero(as_tuple=True)
    f0_place = batch["feature_scale"] == 0
    target = f[f0_place].view(len(items), 256, -1)
    rows = {}
    with torch.no_grad():
        for passes in (0, 1, 2):
            x = f if passes == 0 else self_feed_inputs(m, batch, None, 1.0, passes)
            h, _ = m(ids, x, None, feature_index=k)
            pred = m.predict(h[fb, fp - 1], parent_features(x, k) if m.parent_skip else None).float()
            rows[f"{passes} passes" if passes else "teacher-forced"] = scores(pred[f0_place].view_as(target), target)
        rows["free-running"] = scores(generate_pyramids(m, tok, enc, items, 0)[0], target)
    out[path] = rows
    print(path, json.dumps(rows), flush=True)
print(json.dumps(out))
