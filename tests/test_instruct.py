"Instruct tuning: the four data sets and templates, the stage through its config file, generation and the exact scores."
import subprocess, sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import numpy as np

from puma_nb import toyworld as tw
from puma_nb.config import ConfigError, load_config
from puma_nb.decoder import DecoderConfig, build_decoder
from puma_nb.instruct import (ANSWER_WORDS, IMAGE_KEYS, INSTRUCT_TASKS, InstructData, InstructRunConfig, answer, encode_items, generate_images,
                              conditional_right, conditional_table, inpaint_restored, instruct_collate, instruct_segments,
                              scene_scores, scene_survival, train_instruct, understanding_scores)
from puma_nb.mllm import MLLMConfig, build_mllm, build_sequence, load_mllm, save_mllm, tiny_tokenizer
from puma_nb.pyramid import SCALES, TinyClipConfig, save_clip, tiny_clip, tiny_encoder
from puma_nb.training import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(hidden_size=64, intermediate_size=128, layers=1, heads=2, kv_heads=2)


def test_data_is_deterministic_and_covers_every_kind():
    cond = InstructData("conditional", 90)
    assert Counter(cond[k]["kind"] for k in range(90)) == {"canny": 30, "inpaint": 30, "colorize": 30}
    assert all(cond[k]["masked"] for k in range(90) if cond[k]["kind"] == "inpaint")
    assert [cond[k]["prompt"] for k in range(20)] == [InstructData("conditional", 90)[k]["prompt"] for k in range(20)]
    assert all(InstructData("conditional", 30, p_instruction=0)[k]["prompt"] == cond[k]["caption"] for k in range(30))
    assert all(InstructData("conditional", 30, p_instruction=1)[k]["prompt"].startswith("Please") for k in range(30))
    edits = InstructData("edit", 200)
    assert set(Counter(edits[k]["kind"] for k in range(200))) == set(tw.EDIT_KINDS)
    e = edits[4]  # the scene to score against is the edit's target, not its source
    assert e["scene"] != tw.ShapesWorld("train", 200, "edit")[4]["scene"] or e["kind"] == "change_background"
    assert tw.parse(tw.to_image(e["image"])).scene == tw.Scene.from_dict(e["scene"])
    with pytest.raises(ValueError, match="unknown instruct task"): InstructData("caption", 3)
    with pytest.raises(ValueError, match="p_instruction"): InstructData("conditional", 3, p_instruction=2)


def test_templates_target_only_the_output():
    tok = tiny_tokenizer()
    f = {k: torch.randn(341, 8) for k in IMAGE_KEYS}
    for task in INSTRUCT_TASKS:
        it = InstructData(task, 5)[2]
        seq = build_sequence(tok, instruct_segments(it, f))
        ids = seq["input_ids"]
        assert tok.unk_token_id not in ids.tolist(), task
        if task == "understanding":
            assert tok.decode(ids[seq["text_target"]]) == f"{it['answer']} </s>" and not seq["feature_target"].any()
            assert tok.decode(ids[:30]).startswith("<s> a chat between a curious user")
        else:
            n_in = 0 if task == "t2i" else 341
            assert seq["feature_target"].tolist() == [False] * n_in + [True] * 341, task
            assert torch.equal(seq["features"][n_in:], f["image"])  # the target picture's features are the targets
            assert tok.decode(ids[seq["text_target"]]) == "[IMG] [/IMG] </s>"
        prompt = instruct_segments(it, f, with_target=False)
        assert len(prompt) == len(instruct_segments(it, f)) - 1


def test_collate_encodes_every_picture():
    clip, ccfg = tiny_clip(), TinyClipConfig()
    enc, tok = tiny_encoder(clip, ccfg), tiny_tokenizer()
    items = [InstructData("edit", 4)[k] for k in range(4)]
    fs = encode_items(enc, items)
    assert set(fs[0]) == {"image", "source"} and fs[0]["source"].shape == (341, enc.width)
    batch = instruct_collate(enc, tok)(items)
    assert batch["features"].shape == (4 * 682, enc.width) and batch["feature_target"].sum() == 4 * 341


def test_scores_are_exact():
    items = [InstructData("t2i", 20, "test")[k] for k in range(20)]
    truth = torch.stack([it["image"] for it in items])
    assert scene_scores(items, truth) == {"color": 1.0, "shape": 1.0, "position": 1.0, "background": 1.0, "scene": 1.0}
    shuffled = scene_scores(items, truth.roll(1, 0))
    assert shuffled["scene"] < 0.2 and shuffled["color"] < 0.5  # (a few neighbours share a scene)
    inp = next(x for x in (InstructData("conditional", 30, "test")[k] for k in range(30)) if x["kind"] == "inpaint")
    assert inpaint_restored(inp, inp["image"]) and not inpaint_restored(inp, inp["condition"])
    cond = [InstructData("conditional", 30, "test")[k] for k in range(30)]
    for pictures, want in (("image", True), ("condition", False)):  # the target is right for every kind; no condition is its own target
        x = torch.stack([c[pictures] for c in cond])
        got = [conditional_right(c, im, sv) for c, im, sv in zip(cond, x, scene_survival(cond, x))]
        assert all(g == want for g, c in zip(got, cond) if want or c["kind"] != "canny"), (pictures, got)
    qa = [InstructData("understanding", 10, "test")[k] for k in range(10)]
    s = understanding_scores(qa, [q["answer"] for q in qa[:5]] + ["nonsense"] * 5)
    assert s["accuracy"] == 0.5 and set(s["per_kind"]) == {q["kind"] for q in qa}
    assert s["well_formed"] == {k: float(np.mean([j < 5 for j, q in enumerate(qa) if q["kind"] == k])) for k in s["per_kind"]}  # "nonsense" is no kind's answer
    assert understanding_scores(qa, [ANSWER_WORDS[q["kind"]][0] for q in qa])["well_formed"] == {k: 1.0 for k in s["per_kind"]}


def test_generation_shapes():
    torch.manual_seed(0)
    clip, ccfg = tiny_clip(), TinyClipConfig()
    enc, tok = tiny_encoder(clip, ccfg), tiny_tokenizer()
    model = build_mllm(MLLMConfig(feature_dim=enc.width, **SMALL), tok).eval()
    items = [InstructData("edit", 3, "test")[k] for k in range(3)]
    D = build_decoder(3, DecoderConfig(feature_dim=enc.width)).eval()
    y = generate_images(model, tok, enc, D, items, scale=3, steps=2, guidance=1.0)
    assert y.shape == (3, 3, 64, 64) and 0 <= y.min() and y.max() <= 1
    a = answer(model, tok, enc, [InstructData("understanding", 3, "test")[k] for k in range(3)], max_new_tokens=2)
    assert len(a) == 3 and all(isinstance(s, str) for s in a)
    cond = [InstructData("conditional", 6, "test")[k] for k in range(6)]
    Ds = [build_decoder(i, DecoderConfig(feature_dim=enc.width)).eval() for i in range(5)]
    rows, y0 = conditional_table(model, tok, enc, Ds, cond, scales=(0, 3), steps=2, guidance=1.0)
    assert y0.shape == (6, 3, 64, 64) and set(rows) == set(tw.CONDITION_KINDS)
    for r in rows.values():
        assert set(r["per_scale"]) == {"f0", "f3"} and r["score"] == r["per_scale"]["f0"] and r["n"] == 2
        assert max(r["per_scale"].values()) <= r["max5"] <= sum(r["per_scale"].values())
    with pytest.raises(ValueError, match="include 0"):
        conditional_table(model, tok, enc, Ds, cond, scales=(1, 2), steps=2)


def _init(tmp_path, feature_dim=None):
    clip, ccfg = tiny_clip(), TinyClipConfig()
    save_clip(clip, ccfg, tmp_path / "clip")
    width = tiny_encoder(clip, ccfg).width
    tok = tiny_tokenizer()
    cfg = MLLMConfig(feature_dim=feature_dim or width, **SMALL)
    save_mllm(build_mllm(cfg, tok), tok, cfg, tmp_path / "pre")


def test_instruct_stage_from_its_config_file(tmp_path):
    _init(tmp_path)
    cfg = load_config(InstructRunConfig, ROOT / "configs" / "instruct_tiny.yaml")
    assert cfg.task == "t2i" and cfg.train.precision == "bf16"
    args = ["--config", str(ROOT / "configs" / "instruct_tiny.yaml"), "task=understanding", f"init={tmp_path / 'pre'}",
            f"data.encoder={tmp_path / 'clip'}", "data.n_train=100", "train.steps=4", "train.warmup_steps=1", "train.batch_size=4",
            "train.log_every=1", "train.progress=false", f"train.out_dir={tmp_path / 'und'}", "data.questions=3", "source_skip=true"]
    r = subprocess.run([sys.executable, "-m", "puma_nb.train", *args], capture_output=True, text=True,
                       env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_metrics(tmp_path / "und")
    assert len(rows) == 4 and all(r["mse_f0"] == 0 for r in rows)  # understanding: no picture to generate
    model, tok, mcfg = load_mllm(tmp_path / "und" / "model")
    before, _, pre_cfg = load_mllm(tmp_path / "pre")
    assert pre_cfg.image_stride == 0 and mcfg.image_stride == model.image_stride == cfg.image_stride == 384  # the config's, saved
    assert not pre_cfg.source_skip and mcfg.source_skip and model.source_skip  # turned on at instruct time, saved
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed and "output_proj.weight" not in changed  # the regression head gets no gradient from answers


def test_instruct_stage_refuses_bad_inputs(tmp_path):
    _init(tmp_path, feature_dim=24)
    base = InstructRunConfig(init=str(tmp_path / "pre"))
    base.data.encoder = str(tmp_path / "clip")
    with pytest.raises(ConfigError, match="reads 24-wide features"): train_instruct(base)
    base.init = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="run the pretraining stage first"): train_instruct(base)
    with pytest.raises(ConfigError): load_config(InstructRunConfig, ROOT / "configs" / "instruct_tiny.yaml", ["task=captioning"])
    with pytest.raises(ConfigError, match="image_stride 100 is shorter than an image"):
        load_config(InstructRunConfig, ROOT / "configs" / "instruct_tiny.yaml", ["image_stride=100"])


def test_understanding_can_read_fewer_scales():
    tok = tiny_tokenizer()
    it = InstructData("understanding", 5)[1]
    f = {"image": torch.randn(341, 8)}
    full = build_sequence(tok, instruct_segments(it, f))
    only_f4 = build_sequence(tok, instruct_segments(it, f, input_scales=(4,)))
    assert len(full["input_ids"]) - len(only_f4["input_ids"]) == 340 and torch.equal(only_f4["features"], f["image"][:1])
    assert torch.equal(build_sequence(tok, instruct_segments(it, f, input_scales=(0,)))["features"], f["image"][85:])
    with pytest.raises(ConfigError, match="input_scales must be"):
        load_config(InstructRunConfig, ROOT / "configs" / "instruct_tiny.yaml", ["task=understanding", "data.input_scales=[5]"])
    with pytest.raises(ConfigError, match="understanding task only"):
        load_config(InstructRunConfig, ROOT / "configs" / "instruct_tiny.yaml", ["task=t2i", "data.input_scales=[0]"])
    assert load_config(InstructRunConfig, ROOT / "configs" / "instruct_tiny.yaml", ["task=understanding", "data.input_scales=[2]"]).data.input_scales == (2,)


def test_understanding_conversations_ask_several_questions_per_picture():
    tok, f = tiny_tokenizer(), {"image": torch.randn(341, 8)}
    one, many = InstructData("understanding", 30), InstructData("understanding", 30, questions=8)
    for k in range(30):
        it = many[k]
        assert {k_: v for k_, v in it.items() if k_ != "turns"}.keys() == one[k].keys() and it["question"] == one[k]["question"]
        assert len(it["turns"]) == 8 and it["turns"][0] == (it["question"], it["answer"])
        assert len({q for q, _ in it["turns"][1:]}) >= 4  # the extra questions are of different kinds
        for q, a in it["turns"]:  # every answer is right for the picture
            if q == "what color is the background?": assert a == it["scene"]["background"]
            if q == "how many objects are there?": assert a == tw.NUMBERS[len(it["scene"]["objects"])]
    seq = build_sequence(tok, instruct_segments(many[3], f))
    assert tok.decode(seq["input_ids"][seq["text_target"]]) == " ".join(f"{a} </s>" for _, a in many[3]["turns"])
    assert (seq["input_ids"] == tok.convert_tokens_to_ids("<feat>")).sum() == 341  # the picture once, not once per question
    # a prompt (evaluation) asks the first question only, as for a one-question example
    assert torch.equal(build_sequence(tok, instruct_segments(many[3], f, with_target=False))["input_ids"],
                       build_sequence(tok, instruct_segments(one[3], f, with_target=False))["input_ids"])
    with pytest.raises(ValueError, match="questions must be at least 1"): InstructData("understanding", 3, questions=0)
    cfg = ROOT / "configs" / "instruct_tiny.yaml"
    assert load_config(InstructRunConfig, cfg, ["task=understanding", "data.questions=8"]).data.questions == 8
    with pytest.raises(ConfigError, match="understanding task only"): load_config(InstructRunConfig, cfg, ["task=t2i", "data.questions=2"])
    with pytest.raises(ConfigError, match="at least 1"): load_config(InstructRunConfig, cfg, ["task=understanding", "data.questions=0"])
    with pytest.raises(ConfigError, match="bring their own turns"):
        load_config(InstructRunConfig, cfg, ["task=understanding", "data.questions=2", "data.manifest=x.jsonl"])


def test_understanding_ablation_and_place_probe_scripts(tmp_path):
    "benchmarks/understanding_ablation.py, understanding_exists.py, feature_place_probe.py, object_shape_probe.py and decoder_score.py (figures of 08_instruct, 04_decoder) on a stand-in run folder."
    import json, os
    run = tmp_path / "run"
    _init(run)
    (run / "clip").rename(run / "clip_model"); (run / "clip").mkdir(); (run / "clip_model").rename(run / "clip" / "model")
    (run / "pretrain").mkdir(); (run / "pre").rename(run / "pretrain" / "model")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def bench(script, *args) -> dict:
        "Run benchmarks/<script> and read the JSON of its last line."
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    out = bench("understanding_ablation.py", "--run", run, "--out", tmp_path / "und", "--questions", 3, "--steps", 2, "--scales", 1, "--eval", 6)
    assert (out["questions"], out["steps"], out["scales"], out["lr"]) == (3, 2, [1], 5e-4)
    assert out["train_seconds"] > 0 and 0 <= out["accuracy"] <= 1 and set(out["per_kind"]) <= set(tw.QA_KINDS)
    assert json.loads((tmp_path / "und" / "config.json").read_text())["data"]["questions"] == 3  # the run used the conversations
    first = tmp_path / "und" / "model"  # a second phase from it, on all five scales; then the first model scored again, untrained
    again = bench("understanding_ablation.py", "--run", run, "--out", tmp_path / "und2", "--init", first, "--steps", 1, "--eval", 6)
    assert again["scales"] == [4, 3, 2, 1, 0] and again["init"] == str(first)
    assert json.loads((tmp_path / "und2" / "config.json").read_text())["init"] == str(first)
    scored = bench("understanding_ablation.py", "--run", run, "--out", tmp_path / "none", "--init", first, "--steps", 0, "--scales", 1, "--eval", 6)
    assert (scored["accuracy"], scored["per_kind"], scored["train_seconds"]) == (out["accuracy"], out["per_kind"], 0)
    assert not (tmp_path / "none").exists()
    ex = bench("understanding_exists.py", "--run", run, "--model", first, "--scales", 1, "--n", 5)  # "is there …?" answers, by why
    assert ex["questions"] == 5 and sum(ex[k][1] for k in ("yes", "no_colour_absent", "no_other_shape")) == 5
    assert all(0 <= ex[k][0] <= ex[k][1] for k in ("yes", "no_colour_absent", "no_other_shape"))
    probe = bench("feature_place_probe.py", "--clip", run / "clip" / "model", "--train", 40, "--test", 10)
    assert set(probe) == {"f0", "f1"} and probe["f1"]["chance"] == round(1 / 64, 4)
    assert all(0 <= v[k] <= 1 for v in probe.values() for k in ("exact", "within_one", "over_objects", "over_background"))
    shapes = bench("object_shape_probe.py", "--clip", run / "clip" / "model", "--train", 40, "--test", 10)
    assert shapes["tokens_per_object"] == 36 and shapes["objects"] >= 10 and shapes["chance"] == round(1 / 3, 4)
    assert all(0 <= shapes[k] <= 1 for k in ("all", "small", "large"))
    tokens = bench("clip_token_shape.py", "--clip", run / "clip" / "model", "--train-n", 40, "--test-n", 10)
    assert tokens["clip"] == str(run / "clip" / "model") and tokens["objects"] >= 10 and tokens["chance"] == round(1 / 3, 4)
    assert all(0 <= tokens[f"centre_token_shape_f{i}"] <= 1 for i in range(3))
    assert all(0 <= tokens[f"prefers_true_caption_{a}"] <= 1 for a in ("shape", "color", "size", "position"))
    for trial in ("recipe", "plain", "hard_negatives"):  # two steps of each trial loss, then the probes on the trial CLIP
        t = bench("clip_token_shape.py", "--train", trial, "--steps", 2, "--out", tmp_path / trial, "--train-n", 40, "--test-n", 10)
        assert t["clip"] == str(tmp_path / trial / "model") and (tmp_path / trial / "model").exists()
        assert all(0 <= t[k] <= 1 for k in t if k.startswith(("centre", "prefers")))
        rows = read_metrics(tmp_path / trial)  # the trial's own loss trained it: the recipe's token loss is logged beside the CLIP loss
        assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"]) and (("dense" in rows[-1]) == (trial == "recipe"))
    from puma_nb.decoder import save_puma_decoder
    save_puma_decoder(build_decoder(1), tmp_path / "dec" / "unet_64")  # an untrained D_1: scores near zero, but every key there
    score = bench("decoder_score.py", "--decoders", tmp_path / "dec", "--scale", 1, "--clip", run / "clip" / "model", "--n", 4, "--steps", 2, "--scheduler", "ddpm")
    assert (score["scale"], score["n"], score["scheduler"]) == (1, 4, "ddpm") and all(0 <= score[k] <= 1 for k in ("color", "shape", "position", "background", "scene"))
    for i, n in enumerate(SCALES):  # untrained D_0 … D_4, and the pretraining checkpoint as each image-task instruct model
        save_puma_decoder(build_decoder(i), tmp_path / "five" / f"unet_{n}")
    for task in ("t2i", "edit", "conditional"):
        (run / "instruct" / task).mkdir(parents=True); (run / "instruct" / task / "model").symlink_to(run / "pretrain" / "model")
    gen = bench("decoder_generated_features.py", "--run", run, "--decoders", tmp_path / "five", "--scales", 0, 2, "--n", 3, "--steps", 2)
    assert set(gen["features"]) == {"t2i", "edit", "conditional"} and set(gen["features"]["edit"]) == {f"f{i}" for i in range(5)}
    assert all(r["relative_error"] >= 0 for t in gen["features"].values() for r in t.values()) and "detail_kept" not in gen["features"]["t2i"]["f4"]
    res = gen["decoded"][str(tmp_path / "five")]
    assert len(res["t2i f0 inputs"]) == 5 and set(res["generated"]) == {"f0", "f2"}
    assert set(res["generated"]["f2"]["conditional"]) == set(tw.CONDITION_KINDS) and 0 <= res["generated"]["f0"]["t2i"]["scene"] <= 100


def test_head_trial_pretrains_with_self_feed_and_scores_f0_alone(tmp_path):
    "benchmarks/head_trial.py (the trials of 06_mllm): a pretraining with `self_feed`, a t2i model from it, scored with D_0 only, and a conditional model from that t2i model (`--init`); then t2i_forced_shape.py and edit_guidance.py on the t2i model."
    import json, os
    from puma_nb.decoder import save_puma_decoder
    run, out = tmp_path / "run", tmp_path / "trial"
    save_clip(tiny_clip(), TinyClipConfig(), run / "clip" / "model")
    save_puma_decoder(build_decoder(0), run / "decoders" / "unet_256")  # D_0 alone: --decoders 1 needs no other
    args = ["--run", run, "--out", out, "--parent-skip", 1, "--image-pos", 1, "--tasks", "t2i", "--pretrain-steps", 2, "--steps", 1,
            "--self-feed", 1, "--self-feed-passes", 2, "--pretrain-self-feed", 0.5, "--pretrain-self-feed-passes", 2, "--decoders", 1, "--n", 4]
    script = lambda name, *a: subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *map(str, a)], capture_output=True, text=True,
                                             env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=300)
    r = script("head_trial.py", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    pre = json.loads((out / "pretrain" / "config.json").read_text())
    assert (pre["loss"]["self_feed"], pre["loss"]["self_feed_passes"], pre["train"]["steps"]) == (0.5, 2, 2)  # the pretraining's own
    inst = json.loads((out / "t2i" / "config.json").read_text())
    assert (inst["loss"]["self_feed"], inst["loss"]["self_feed_passes"], inst["train"]["steps"]) == (1.0, 2, 1)
    rows = read_metrics(out / "pretrain")  # logged every 20 steps, and at the last
    assert rows[-1]["step"] == 2 and all(np.isfinite(m["loss"]) for m in rows)
    scores = json.loads((out / "scores.json").read_text())
    assert (scores["pretrain_self_feed"], scores["pretrain_self_feed_passes"]) == (0.5, 2)
    assert set(scores["t2i"]) == {"f0", "max5"} and scores["t2i"]["max5"] == scores["t2i"]["f0"]  # one scale: its max is itself
    assert all(0 <= v <= 1 for v in scores["t2i"]["f0"].values())
    r = script("head_trial.py", "--run", run, "--out", tmp_path / "from_t2i", "--parent-skip", 1, "--image-pos", 1, "--tasks", "conditional",
               "--init", out / "t2i" / "model", "--steps", 1, "--decoders", 1, "--n", 3)  # a conditional model tuned from that t2i model
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (tmp_path / "from_t2i" / "pretrain").exists()  # --init: no pretraining of its own
    cond = json.loads((tmp_path / "from_t2i" / "conditional" / "config.json").read_text())
    assert (cond["init"], cond["task"], cond["train"]["steps"]) == (str(out / "t2i" / "model"), "conditional", 1)
    scores = json.loads((tmp_path / "from_t2i" / "scores.json").read_text())
    assert scores["init"] == str(out / "t2i" / "model") and set(scores["conditional"]["canny"]["per_scale"]) == {"f0"}
    r = script("t2i_forced_shape.py", "--clip", run / "clip" / "model", "--decoder", run / "decoders" / "unet_256", "--model", out / "t2i" / "model",
               "--n", 3, "--steps", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    forced = json.loads(r.stdout.strip().splitlines()[-1])[str(out / "t2i" / "model")]  # f̂_0 written four ways, each decoded and parsed
    assert list(forced) == ["teacher-forced", "1 passes", "2 passes", "free-running"]
    assert all(0 <= row[k] <= 1 for row in forced.values() for k in ("color", "shape", "position", "scene")) and all(row["mse_f0"] > 0 for row in forced.values())
    save_puma_decoder(build_decoder(1), run / "decoders" / "unet_64")  # edit_guidance.py decodes f0 and f1
    for mode in ("instr", "source"):  # 06_mllm's guidance trial, with the t2i model standing in for an edit model
        r = script("edit_guidance.py", "--run", run, "--model", out / "t2i" / "model", "--mode", mode, "--w", "1,2", "--n", 3, "--steps", 2)
        assert r.returncode == 0, r.stderr[-2000:]
        rows = [json.loads(l.split(" # ")[0]) for l in r.stdout.strip().splitlines()]
        assert [(row["mode"], row["w"]) for row in rows] == [(mode, 1.0), (mode, 2.0)]
        assert all(0 <= row[f][k] <= 1 for row in rows for f in ("f0", "f1") for k in ("edit_success", "color", "shape"))
