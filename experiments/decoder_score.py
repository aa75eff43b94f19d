"""Score one trained decoder D_i on held-out pictures: D_i(f_i(x)) decoded (DDIM 20 by default), then read back by the exact
ShapesWorld parser. Cited in 04_decoder for the D_0 variants (architecture and steps).

    python experiments/decoder_score.py --decoders runs/toy/decoders [--scale 0] [--clip runs/toy/clip/model] [--n 200]
        [--steps 20] [--guidance 1] [--scheduler ddim]

`--decoders` is a folder holding `unet_<n>` (the main job's `decoders/`, or a decoder run's out_dir).
Prints JSON: PSNR_r and the survival rates (colour, shape, position, background, whole scene), colour survival for
scenes of one and of two objects, and how the lost colours went: an object missing (fewer objects read than drawn),
one too many, or the same number with a colour changed. Cited in 05_reconstruction (*What the toy run shows*: the D_3 rows)."""
import argparse, collections, json, time

import torch

from puma_nb import toyworld as tw
from puma_nb.parser import parse
from puma_nb.decoder import load_puma_decoder
from puma_nb.pyramid import SCALES, load_encoder
from puma_nb.reconstruction import psnr, reconstruct, survival, survival_rates

ap = argparse.ArgumentParser()
ap.add_argument("--decoders", required=True, help="a folder with unet_1 … unet_256 (or just the one of --scale)")
ap.add_argument("--scale", type=int, default=0)
ap.add_argument("--clip", default="runs/toy/clip/model", help="the tiny CLIP the decoder was trained on")
ap.add_argument("--n", type=int, default=200, help="held-out test scenes (the first n)")
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--guidance", type=float, default=1.0)
ap.add_argument("--scheduler", default="ddim", help="ddim, ddpm, … (the names `sample` accepts)")
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
def breakdown(scenes, images) -> dict:
    "Colour survival by the number of objects drawn, and each colour loss by what the parser read instead."
    kept, lost = collections.defaultdict(list), collections.Counter()
    for s, im in zip(scenes, images):
        d = parse(tw.to_image(im)).scene
        n, m, ok = len(s.objects), len(d.objects) if d else 0, survival(s, d)["color"]
        kept[n].append(ok)
        if not ok: lost["fewer objects" if m < n else "more objects" if m > n else "a colour changed"] += 1
    return {**{f"color_{k}_objects": round(sum(v) / len(v), 4) for k, v in sorted(kept.items())},
            **{f"n_{k}_objects": len(v) for k, v in sorted(kept.items())}, "colour_lost_as": dict(lost)}

enc = load_encoder(args.clip)
D = load_puma_decoder(f"{args.decoders}/unet_{SCALES[args.scale]}").eval()
ds = tw.ShapesWorld("test", args.n, "caption", 0)
scenes = [ds.scene(i) for i in range(args.n)]
x = torch.stack([tw.to_tensor(tw.render(s)) for s in scenes])
t = time.time()
y = reconstruct(D, enc, x, args.scale, seed=args.seed, steps=args.steps, guidance=args.guidance, scheduler=args.scheduler)
print(json.dumps({"decoders": args.decoders, "scale": args.scale, "n": args.n, "steps": args.steps, "guidance": args.guidance, "scheduler": args.scheduler,
                  "psnr_r": round(float(psnr(x, y).mean()), 2), **{k: round(v, 4) for k, v in survival_rates(scenes, y).items()}, **breakdown(scenes, y),
                  "decode_seconds": round(time.time() - t, 1)}))
