"""The tiny CLIP's image embedding, the mean of its patch tokens (`pool: avg`, the toy recipe) or the CLS token (`pool: tok`,
open_clip's default), and its attention, global (`attn_window: 0`, CLIP's) or windowed (`attn_window: 1`, the toy recipe).
Trains one tiny CLIP per choice with the recipe of configs/toy/clip.yaml (same seed, same data), then prints, per choice,
caption retrieval among the held-out captions and `probe_scales`: what a ridge probe reads from each scale's tokens
(background, the colour in each cell, the set of colours present). Cited in 03_pyramid.

    python experiments/clip_pool.py [--steps 400] [--out runs/clip_pool]            # pool avg vs tok, both global
    python experiments/clip_pool.py --pools avg --windows 0,1                       # global vs windowed attention

About two minutes per CLIP on a 2-core CPU. Prints one JSON line per choice."""
import argparse, json
from dataclasses import replace
from pathlib import Path

from puma_nb.pyramid import ClipRunConfig, load_clip, probe_scales, retrieval, tiny_encoder, train_clip

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=400, help="CLIP training steps (the toy preset: 400)")
ap.add_argument("--pools", default="avg,tok")
ap.add_argument("--windows", default="0", help="attn_window values (0: global attention)")
ap.add_argument("--out", default="runs/clip_pool", help="gets one run folder per choice (a finished one is reused)")
args = ap.parse_args()
r3 = lambda d: {k: r3(v) if isinstance(v, dict) else round(v, 3) for k, v in d.items()}  # nested dicts, 3 decimals

for pool, k in [(p, int(w)) for p in args.pools.split(",") for w in args.windows.split(",")]:
    cfg = ClipRunConfig()
    cfg.model = replace(cfg.model, pool=pool, attn_window=k)
    out = Path(args.out) / (pool if k == 0 else f"{pool}_w{k}")  # the global-attention folders keep their old names
    cfg.train = replace(cfg.train, steps=args.steps, warmup_steps=max(1, args.steps // 10), out_dir=str(out))
    if not (out / "model" / "model.safetensors").exists(): train_clip(cfg)
    clip, ccfg = load_clip(out / "model")
    print(json.dumps({"pool": pool, "attn_window": k, "steps": args.steps,
                      "retrieval": r3(retrieval(clip, ccfg, cfg.data.n_test, "test", cfg.data.seed)),
                      "probe": r3(probe_scales(tiny_encoder(clip, ccfg), n_train=2000, n_test=cfg.data.n_test, seed=cfg.data.seed))}),
          flush=True)
