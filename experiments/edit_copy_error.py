"""Where does an edit model go wrong: on the tokens the edit changes, or on those it should copy? For held-out ShapesWorld
edits, split the target's tokens at each scale (f_4 … f_0) into *kept* (the source's token is the target's: squared
difference per channel below 0.1) and *changed*, and report the model's mean squared error on each, teacher-forced (the
true earlier target tokens as inputs, as in training) and free-running (its own generated tokens, as at test time).
Copying the source scores ~0 on the kept tokens, so a model that has learnt the copy should too. Reads models with
`parent_skip`. The records `image_stride`, `self_feed` and `source_skip` in `reports/ablations/` cite it.

    python experiments/edit_copy_error.py --encoder runs/toy/clip/model --model runs/toy/instruct/edit/model [--model …] [--n 40]

Each model is read with its own `image_stride` (from its folder). Prints one JSON line per model, then one for copying the source."""
import argparse, json

import torch

from puma_nb.instruct import InstructData, generate_pyramids, instruct_segments
from puma_nb.mllm import build_sequence, collate_sequences, flatten_pyramid, load_mllm
from puma_nb.mllm_loss import parent_features
from puma_nb.pyramid import load_encoder, pyramid

ap = argparse.ArgumentParser()
ap.add_argument("--encoder", default="runs/toy/clip/model", help="the tiny CLIP the models were tuned on")
ap.add_argument("--model", action="append", required=True, help="an edit model folder (repeatable)")
ap.add_argument("--n", type=int, default=40, help="held-out edits (the first n)")
args = ap.parse_args()
torch.set_num_threads(2)
enc = load_encoder(args.encoder)
items = [InstructData("edit", args.n, "test", 0)[k] for k in range(args.n)]
with torch.no_grad():
    fs = flatten_pyramid(pyramid(enc(torch.stack([it["source"] for it in items]))))
    ft = flatten_pyramid(pyramid(enc(torch.stack([it["image"] for it in items]))))
changed = ((fs - ft) ** 2).mean(-1) > 0.1  # (n, 341)
SPANS = {"f4": slice(0, 1), "f3": slice(1, 5), "f2": slice(5, 21), "f1": slice(21, 85), "f0": slice(85, 341)}  # places in the flattened pyramid

def split_error(pred:torch.Tensor) -> dict:
    e = ((pred - ft) ** 2).mean(-1)
    return {f"{s}_{part}": round(float(e[:, sl][m[:, sl]].mean()), 3) if m[:, sl].any() else None
            for s, sl in SPANS.items() for part, m in (("kept", ~changed), ("changed", changed))}

for folder in args.model:
    m, tok, cfg = load_mllm(folder)
    m.eval()
    with torch.no_grad():
        b = collate_sequences([build_sequence(tok, instruct_segments(it, {"source": fs[i], "image": ft[i]}))  # the edit template
                               for i, it in enumerate(items)], tok.pad_token_id)
        h, _ = m(b["input_ids"], b["features"], b["attention_mask"], feature_index=b["feature_index"])
        fb, fp = (b["input_ids"] == m.feat_token_id).nonzero(as_tuple=True)
        keep = b["feature_target"]
        parents = parent_features(b["features"], b["feature_index"])[keep]  # read by a parent_skip head (06_mllm)
        forced = m.predict(h[fb[keep], fp[keep] - 1], parents).view(len(items), 341, -1)  # the hidden state before a token predicts it
        free = flatten_pyramid(generate_pyramids(m, tok, enc, items, 0))
    print(json.dumps({"model": folder, "image_stride": cfg.image_stride, "teacher_forced": split_error(forced),
                      "free_running": split_error(free)}))
print(json.dumps({"model": "copy the source", "share_changed_f0": round(float(changed[:, SPANS["f0"]].float().mean()), 3),
                  "error": split_error(fs)}))
