"""Guidance for the edit model's features, at generation, with no retraining (`reports/ablations/edit_guidance`).
Each generated token is pushed away from a reference: f̂ = f̂_u + w (f̂_c − f̂_u), where f̂_c is the edit model's
prediction for the real prompt (source picture, instruction) and f̂_u either its prediction for the source picture with an
empty instruction (`--mode instr`, as InstructPix2Pix's text guidance, but with a branch the model never trained on) or the
source picture's own token at that place (`--mode source`). Both branches read the same guided tokens back. w = 1 is the
model's own generation. Scored as Table 3 (whole scene right, by the parser) at f0 and f1, DDIM 20, guidance 1 in the decoders.

    python experiments/edit_guidance.py --run runs/toy --model runs/toy/instruct/edit/model --mode instr --w 1,1.5,2,3 --n 200

Prints one JSON line per w."""
import argparse, json, time
import numpy as np, torch

from puma_nb.job import PRESETS
from puma_nb.decoder import decode_features, load_puma_decoder, null_features
from puma_nb.instruct import IMAGE_KEYS, InstructData, encode_items, instruct_segments, scene_survival
from puma_nb.mllm import PARENT, TOKENS_UP_TO, Image, Text, build_prompt, left_pad, load_mllm, unflatten_pyramid
from puma_nb.pyramid import SCALES, load_encoder

ap = argparse.ArgumentParser()
ap.add_argument("--run", required=True, help="a main-job run folder: its clip/model and decoders unet_256, unet_64 are used")
ap.add_argument("--model", required=True, help="an edit model folder")
ap.add_argument("--mode", choices=("instr", "source"), required=True, help="the reference f̂_u: empty instruction, or the source's token")
ap.add_argument("--w", default="1,1.5,2", help="guidance weights, comma-separated")
ap.add_argument("--n", type=int, default=200, help="held-out edits")
ap.add_argument("--steps", type=int, default=None, help="decoder DDIM steps (default: the toy preset's, 20)")
args = ap.parse_args()
p = PRESETS["toy"]
enc = load_encoder(f"{args.run}/clip/model")
Ds = [load_puma_decoder(f"{args.run}/decoders/unet_{SCALES[i]}").eval() for i in (0, 1)]
m, tok, _ = load_mllm(args.model); m.eval()
items = [InstructData("edit", args.n, "test", p.seed)[k] for k in range(args.n)]

@torch.no_grad()
def guided(prompts_c:list[dict], prompts_u:list[dict], w:float, src:torch.Tensor) -> torch.Tensor:
    "f̂_4 … f̂_0 `(B, 341, C)`, the real and the reference prompts run as one left-padded batch with one KV cache."
    B, C = len(prompts_c), m.output_proj.out_features
    ids, mask, feats, index = left_pad(prompts_c + prompts_u, tok.pad_token_id)
    pos, out, cache = m.position_ids(ids, mask), [], None
    for k in range(TOKENS_UP_TO[0]):
        if k:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            h, cache = m(torch.full((2 * B, 1), m.feat_token_id), out[-1].repeat(2, 1), mask, pos[:, -1:] + k, cache=cache,
                         use_cache=True, feature_index=torch.full((2 * B,), k - 1))
        else: h, cache = m(ids, feats.view(-1, C), mask, pos, use_cache=True, feature_index=index.view(-1))
        f = m.predict(h[:, -1], out[int(PARENT[k])].repeat(2, 1) if k else torch.zeros(2 * B, C))
        f_c, f_u = f[:B], (f[B:] if args.mode == "instr" else src[:, k])
        out.append(f_u + w * (f_c - f_u))
    return torch.stack(out, 1)

kinds, batches = sorted({it["kind"] for it in items}), []
for b in range(0, args.n, 50):  # each batch's prompts (with and without the instruction) and source pyramids, built once for every w
    chunk = items[b:b + 50]
    fs = encode_items(enc, chunk, [k for k in IMAGE_KEYS if k != "image"])
    batches.append(([build_prompt(tok, instruct_segments(it, f, with_target=False), open_image=True) for it, f in zip(chunk, fs)],
                    [build_prompt(tok, [Image(f["source"]), Text("")], open_image=True) for f in fs],
                    torch.stack([f["source"] for f in fs]).float()))
for w in (float(x) for x in args.w.split(",")):
    t0 = time.time()
    pyr, row = unflatten_pyramid(torch.cat([guided(pc, pu, w, src) for pc, pu, src in batches])), {"mode": args.mode, "w": w}
    for i in (0, 1):
        y = decode_features(Ds[i], pyr[i], null_features(enc, i, 64), seed=0, steps=args.steps or p.sample_steps, guidance=1.0, scheduler="ddim")
        sv = scene_survival(items, y)
        row[f"f{i}"] = {"edit_success": float(np.mean([r["scene"] for r in sv])), **{a: float(np.mean([r[a] for r in sv])) for a in ("color", "shape")},
                        "per_kind": {kd: round(float(np.mean([r["scene"] for r, it in zip(sv, items) if it["kind"] == kd])), 3) for kd in kinds}}
    print(json.dumps(row), f"# {time.time() - t0:.0f} s", flush=True)
