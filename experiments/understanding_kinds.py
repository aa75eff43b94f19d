"""Do a main-job run's understanding models answer each question with words of the asked kind? For the instruct model
(all five scales) and Table 5's single-scale models of a `puma-nb toy` run, answer the report's held-out ShapesWorld
questions and print, per model, the accuracy and `well_formed` (the share of answers the question's kind can have: a
number for "how many …?", yes or no for "is there …?"), overall and per kind. The table in 08_instruct ("Many wrong
answers are not of the asked kind") comes from this script.

    python experiments/understanding_kinds.py --run runs/toy17 [--n 500]

Prints one JSON line per model."""
import argparse, json
from pathlib import Path

import torch

from puma_nb.instruct import InstructData, answer, understanding_scores
from puma_nb.mllm import SCALE_ORDER, load_mllm
from puma_nb.pyramid import load_encoder

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/toy", help="a finished main-job run folder (clip/model, instruct/understanding*)")
ap.add_argument("--n", type=int, default=500, help="held-out questions (the report's: 500)")
args = ap.parse_args()
torch.set_num_threads(2)
run = Path(args.run)
enc = load_encoder(str(run / "clip" / "model"))
qa = [InstructData("understanding", args.n, "test", 0)[k] for k in range(args.n)]
for name, scales in [("understanding", SCALE_ORDER)] + [(f"understanding_f{i}", (i,)) for i in SCALE_ORDER]:
    if not (run / "instruct" / name / "model").exists(): continue
    m, tok, _ = load_mllm(run / "instruct" / name / "model")
    s = understanding_scores(qa, answer(m, tok, enc, qa, input_scales=scales))
    n_kind = {k: sum(q["kind"] == k for q in qa) for k in s["well_formed"]}
    print(json.dumps({"model": name, "scales": list(scales), "accuracy": s["accuracy"],
                      "well_formed": round(sum(v * n_kind[k] for k, v in s["well_formed"].items()) / sum(n_kind.values()), 3),
                      "well_formed_per_kind": {k: round(v, 3) for k, v in s["well_formed"].items()},
                      "per_kind": {k: round(v, 3) for k, v in s["per_kind"].items()}}), flush=True)
