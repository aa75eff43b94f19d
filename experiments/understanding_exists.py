"""Where an understanding model's "is there a <colour> <shape>?" answers fail: the held-out questions of that kind split
into those whose answer is *yes*, *no* because no object has that colour, and *no* because the object of that colour has
another shape; prints JSON with [right, of] for each. reports/ablations/understanding_f2_first comes from this script.

    python experiments/understanding_exists.py --run runs/pre22 --model runs/abl/f2_then_all300/model
    python experiments/understanding_exists.py --run runs/pre22 --model runs/abl/f2_1500/model --scales 2

The questions are the first `--n` of this kind among the first 2000 held-out understanding examples (seed 0)."""
import argparse, json
from pathlib import Path

from puma_nb import toyworld as tw
from puma_nb.instruct import InstructData, answer
from puma_nb.mllm import load_mllm
from puma_nb.pyramid import load_encoder

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="runs/toy", help="a main-job run folder: its clip/model encodes the pictures")
ap.add_argument("--model", required=True, help="an understanding model folder")
ap.add_argument("--scales", default="43210", help="the input scales the model was trained to read, coarse to fine")
ap.add_argument("--n", type=int, default=150, help="questions of this kind")
args = ap.parse_args()
model, tok, _ = load_mllm(args.model)
enc = load_encoder(str(Path(args.run) / "clip" / "model"))
ds = InstructData("understanding", 2000, "test", 0)
qa = [q for q in (ds[k] for k in range(2000)) if q["kind"] == "exists"][:args.n]
answers = answer(model, tok, enc, qa, input_scales=tuple(int(c) for c in args.scales))
counts = {"yes": [0, 0], "no_colour_absent": [0, 0], "no_other_shape": [0, 0]}
for q, a in zip(qa, answers):
    scene, color = tw.Scene.from_dict(q["scene"]), q["question"].split()[3]  # "is there a <colour> <shape>?"
    case = "yes" if q["answer"] == "yes" else ("no_other_shape" if any(o.color == color for o in scene.objects) else "no_colour_absent")
    counts[case][0] += a.strip() == q["answer"]; counts[case][1] += 1
print(json.dumps({"model": args.model, "scales": args.scales, "questions": len(qa), **counts}))
