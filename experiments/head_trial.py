"""The MLLM's regression head on trial: pretrain the tiny MLLM (the toy recipe, `configs/toy/pretrain.yaml`, 600 steps as
the main job) with `parent_skip` and `image_pos` on or off, tune the text-to-image (and optionally the editing and
conditional) models from it with the tiny instruct recipe, and score Table 2 (and Table 3) with a finished run's decoders,
as the main job does (100 held-out examples, two seeds, DDIM 20, guidance 1). The records of `parent_skip`, `self_feed`,
`change_weight`, `t2i_steps` and `edit_from_t2i` in `reports/ablations/` come from this script (and `source_skip`'s, from
its version at commit 4438011, before that option was removed).

    python experiments/head_trial.py --run runs/toy --out runs/ps0 --parent-skip 0 --image-pos 0
    python experiments/head_trial.py --run runs/toy --out runs/ps2 --parent-skip 1 --image-pos 1 --tasks t2i,edit
    python experiments/head_trial.py --run runs/toy --out runs/a1 --parent-skip 1 --image-pos 1 --tasks edit --alpha 1,1,1,1,1
    python experiments/head_trial.py --run runs/toy --out runs/sf5 --parent-skip 1 --image-pos 1 --tasks edit,t2i --self-feed 0.5
    python experiments/head_trial.py --run runs/toy --out runs/x2t --init runs/toy/instruct/t2i/model --parent-skip 1 --image-pos 1 \
        --self-feed 1 --self-feed-passes 2 --decoders 1 --tasks conditional,edit   # reports/ablations/edit_from_t2i

Needs a `puma-nb toy` run folder (`clip/model`, `decoders`); hard-link its `pretrain` into `--out` to start from its
pretraining (`mkdir runs/ps2 && cp -al runs/toy/pretrain runs/ps2/`). Reuses what `--out` already holds (a trained stage is
skipped), prints each table as JSON and writes them to `<out>/scores.json`. About 10 minutes a task on two CPU cores."""
import argparse, json, time
from dataclasses import replace
from pathlib import Path

from puma_nb.config import load_stage_config
from puma_nb.job import CONFIGS, PRESETS, RUN_CONFIGS
from puma_nb.run_eval import TABLE1_SAMPLING
from puma_nb.instruct import InstructData, conditional_table, edit_table, t2i_table, train_instruct
from puma_nb.mllm import load_mllm
from puma_nb.pretrain import train_pretrain
from puma_nb.decoder import load_puma_decoder
from puma_nb.pyramid import SCALES, load_encoder

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/toy", help="a main-job run folder: its clip/model and decoders are used")
ap.add_argument("--out", required=True, help="where the models train (reused when finished)")
ap.add_argument("--parent-skip", type=int, choices=(0, 1), required=True, help="MLLMConfig.parent_skip")
ap.add_argument("--image-pos", type=int, choices=(0, 1), required=True, help="MLLMConfig.image_pos")
ap.add_argument("--tasks", default="t2i", help="comma-separated: t2i, edit, conditional")
ap.add_argument("--steps", type=int, default=None, help="each instruct model's steps (default: the toy preset's, 300)")
ap.add_argument("--alpha", default=None, help="Eq. 2's α_0,…,α_4 for the instruct models, comma-separated (default: the paper's 1,8,64,512,1024)")
ap.add_argument("--self-feed", type=float, default=0.0, help="LossConfig.self_feed of the instruct models: the share of target tokens read as the model's own prediction "
                "(default 0, teacher forcing, as PUMA; the toy recipe uses 1)")
ap.add_argument("--self-feed-passes", type=int, default=1, help="LossConfig.self_feed_passes (the toy recipe uses 2)")
ap.add_argument("--change-weight", type=float, default=None, help="LossConfig.change_weight of the instruct models: what a target token unlike its source's weighs "
                "(default: the recipe's, 4 for edit (configs/toy/edit.yaml) and 1 (PUMA) for the others)")
ap.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (default: the toy preset's, 600)")
ap.add_argument("--pretrain-self-feed", type=float, default=0.0, help="LossConfig.self_feed of the pretraining (default 0: the toy recipe's, teacher forcing)")
ap.add_argument("--pretrain-self-feed-passes", type=int, default=1, help="LossConfig.self_feed_passes of the pretraining")
ap.add_argument("--init", default=None, help="start every instruct model from this model folder (e.g. a finished text-to-image model, "
                                           "`runs/toy/instruct/t2i/model`) instead of `<out>/pretrain/model`; the pretraining is then not trained")
ap.add_argument("--decoders", type=int, default=5, help="score with D_0 … D_{N-1} only (1: f0 alone; the run folder then needs only unet_256)")
ap.add_argument("--n", type=int, default=100, help="held-out examples per task")
args = ap.parse_args()
p, run, out, t0 = PRESETS["toy"], Path(args.run), Path(args.out), time.time()
encp = run / "clip" / "model"
done = lambda d: (d / "model" / "model.safetensors").exists()

recipe = lambda name: load_stage_config(CONFIGS / f"{name}.yaml", RUN_CONFIGS, [f"data.encoder={encp}"])
pre = recipe("pretrain")
n_pre = args.pretrain_steps or pre.train.steps
pre.train = replace(pre.train, steps=n_pre, warmup_steps=max(1, n_pre // 50), out_dir=str(out / "pretrain"), progress=False)
pre.data.n_train, pre.data.seed = p.n_train, p.seed
pre.model = replace(pre.model, parent_skip=bool(args.parent_skip), image_pos=bool(args.image_pos))
pre.loss = replace(pre.loss, self_feed=args.pretrain_self_feed, self_feed_passes=args.pretrain_self_feed_passes)
if not args.init and not done(out / "pretrain"): train_pretrain(pre)
print(f"pretrained at {time.time() - t0:.0f} s", flush=True)

Ds = [load_puma_decoder(run / "decoders" / f"unet_{SCALES[i]}").eval() for i in range(args.decoders)]  # D_0 … D_{N-1}
enc, res, scales = load_encoder(str(encp)), {}, tuple(range(args.decoders))  # the scales the loaded decoders draw
sampling = {**TABLE1_SAMPLING, "steps": p.sample_steps}
for task in args.tasks.split(","):
    cfg = recipe(task)
    cfg.init = str(args.init or out / "pretrain" / "model")
    n = args.steps or cfg.train.steps
    cfg.train = replace(cfg.train, steps=n, warmup_steps=max(1, n // 20), out_dir=str(out / task), progress=False)
    cfg.data.n_train, cfg.data.seed = p.n_train, p.seed
    if args.alpha: cfg.loss = replace(cfg.loss, alpha=tuple(float(a) for a in args.alpha.split(",")))
    cfg.loss = replace(cfg.loss, self_feed=args.self_feed, self_feed_passes=args.self_feed_passes)
    if args.change_weight is not None: cfg.loss = replace(cfg.loss, change_weight=args.change_weight)
    if not done(out / task): train_instruct(cfg)
    m, tok, _ = load_mllm(out / task / "model")
    items = [InstructData(task, args.n, "test", p.seed)[k] for k in range(args.n)]
    if task == "t2i": res[task], _ = t2i_table(m, tok, enc, Ds, items, seeds=(0, 1), **sampling)
    elif task == "edit": res[task], _ = edit_table(m, tok, enc, Ds, items, scales=scales, **sampling)
    else: res[task], _ = conditional_table(m, tok, enc, Ds, items, scales=scales, **sampling)
    print(task, json.dumps(res[task]), f"at {time.time() - t0:.0f} s", flush=True)
(out / "scores.json").write_text(json.dumps({"parent_skip": args.parent_skip, "image_pos": args.image_pos, "alpha": args.alpha, "self_feed": args.self_feed, "self_feed_passes": args.self_feed_passes, "change_weight": args.change_weight, "steps": args.steps, "n": args.n,
                                                "init": args.init, "pretrain_self_feed": args.pretrain_self_feed, "pretrain_self_feed_passes": args.pretrain_self_feed_passes, **res}, indent=1))
