"""Understanding recipes from a main-job run's pretrained MLLM: questions per picture (`data.questions`), steps, input
scales, learning rate and batch size, each scored on the same held-out ShapesWorld questions. reports/ablations/questions
comes from this script.

    python experiments/understanding_ablation.py --run runs/toy --questions 8 --steps 1500 --scales 1 --out runs/ablation/q8_f1
    python experiments/understanding_ablation.py --run runs/toy --questions 1 --steps 2625 --scales 1 --out runs/ablation/q1_f1_long
    python experiments/understanding_ablation.py --run runs/toy --questions 8 --steps 150 --init runs/ablation/q8_f1/model --out runs/ablation/q8_f1_then_all

`--init` starts from another model instead of the run's pretrained one (a second phase, on other input scales);
with `--steps 0` the model of `--init` is only scored, reading the pictures at `--scales`.

Needs a finished `puma-nb toy` run folder (`pretrain/model` and `clip/model`). Trains with the tiny instruct recipe
(`configs/toy/understanding.yaml`) unless told otherwise, resumes an unfinished run, reuses a finished one, and prints JSON:
training seconds and minutes (from the logged throughput), the last answer CE, the answer accuracy overall and per kind,
and per kind the share of answers that are of the asked kind (`well_formed`)."""
import argparse, json
from dataclasses import replace
from pathlib import Path

from puma_nb.config import load_stage_config
from puma_nb.job import CONFIGS, RUN_CONFIGS
from puma_nb.instruct import InstructData, answer, train_instruct, understanding_scores
from puma_nb.mllm import load_mllm
from puma_nb.pyramid import load_encoder
from puma_nb.checkpoints import read_metrics

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/toy", help="a main-job run folder: its pretrain/model and clip/model are used")
ap.add_argument("--out", required=True, help="where this model trains (resumed when it exists)")
ap.add_argument("--questions", type=int, default=1, help="questions per training picture, as one conversation")
ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--scales", default="43210", help="the input scales, coarse to fine, e.g. 43210 (all) or 1 (f1 only)")
ap.add_argument("--lr", type=float, default=None, help="default: the tiny recipe's")
ap.add_argument("--batch", type=int, default=None, help="sequences per step; default: the tiny recipe's (16)")
ap.add_argument("--eval", type=int, default=500, help="held-out questions to answer")
ap.add_argument("--init", default=None, help="start from this model folder instead of the run's pretrain/model; with --steps 0, score it as it is")
args = ap.parse_args()

run, scales = Path(args.run), tuple(int(c) for c in args.scales)
enc_dir = run / "clip" / "model"
init = Path(args.init) if args.init else run / "pretrain" / "model"
if args.steps < 0 or (args.steps == 0 and not args.init): ap.error("--steps must be positive (0 only with --init: score that model)")
cfg = load_stage_config(CONFIGS / "understanding.yaml", RUN_CONFIGS, [f"init={init}", f"data.encoder={enc_dir}", "data.input_scales=[4, 3, 2, 1, 0]"])
cfg.train = replace(cfg.train, steps=max(args.steps, 1), warmup_steps=max(1, args.steps // 20), out_dir=args.out,
                    lr=cfg.train.lr if args.lr is None else args.lr, batch_size=args.batch or cfg.train.batch_size)
cfg.data.n_train, cfg.data.input_scales, cfg.data.questions = 20_000, scales, args.questions
if args.steps and not (Path(args.out) / "model" / "model.safetensors").exists(): train_instruct(cfg)

rows = read_metrics(args.out) if args.steps else []
steps_done = [0] + [r["step"] for r in rows]  # each row's throughput covers the steps since the previous row
seconds = sum((b - a) * cfg.train.batch_size / r["samples_per_s"] for a, b, r in zip(steps_done, steps_done[1:], rows))
model, tok, _ = load_mllm(Path(args.out) / "model" if args.steps else init)
qa = [InstructData("understanding", args.eval, "test", 0)[k] for k in range(args.eval)]
scores = understanding_scores(qa, answer(model, tok, load_encoder(str(enc_dir)), qa, input_scales=scales))
print(json.dumps({"questions": args.questions, "steps": args.steps, "batch": cfg.train.batch_size, "scales": list(scales), "lr": cfg.train.lr,
                  "train_seconds": round(seconds, 1), "train_minutes": round(seconds / 60, 1), "last_ce": round(rows[-1]["ce"], 3) if rows else None, "init": str(init),
                  "accuracy": scores["accuracy"],
                  "per_kind": {k: round(v, 3) for k, v in scores["per_kind"].items()},
                  "well_formed": {k: round(v, 3) for k, v in scores["well_formed"].items()}}))
