"Instruct tuning: the four data sets and templates, the stage through its config file, generation and the exact scores."
import subprocess, sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import numpy as np

from puma_nb import toyworld as tw
from puma_nb.parser import parse
from puma_nb.checkpoints import read_metrics
from puma_nb.config import ConfigError, load_config
from puma_nb.decoder import DecoderConfig, build_decoder
from puma_nb.instruct import (ANSWER_WORDS, IMAGE_KEYS, INSTRUCT_TASKS, InstructData, InstructRunConfig, answer, encode_items, generate_images,
                              conditional_right, conditional_table, inpaint_restored, instruct_collate, instruct_segments,
                              scene_scores, scene_survival, train_instruct, understanding_scores)
from puma_nb.mllm import MLLMConfig, build_mllm, build_sequence, load_mllm, save_mllm, tiny_tokenizer
from puma_nb.pyramid import SCALES, TinyClipConfig, save_clip, tiny_clip, tiny_encoder

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
    assert parse(tw.to_image(e["image"])).scene == tw.Scene.from_dict(e["scene"])
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
    rows, pics = conditional_table(model, tok, enc, Ds, cond, scales=(0, 3), steps=2, guidance=1.0)
    assert set(pics) == {0, 3} and pics[0].shape == pics[3].shape == (6, 3, 64, 64) and set(rows) == set(tw.CONDITION_KINDS)
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
    cfg = load_config(InstructRunConfig, ROOT / "configs" / "toy" / "t2i.yaml")
    assert cfg.task == "t2i" and cfg.train.precision == "auto"  # bf16 where the CPU has it natively
    args = ["--config", str(ROOT / "configs" / "toy" / "t2i.yaml"), "task=understanding", f"init={tmp_path / 'pre'}",
            f"data.encoder={tmp_path / 'clip'}", "data.n_train=100", "train.steps=4", "train.warmup_steps=1", "train.batch_size=4",
            "train.log_every=1", "train.progress=false", f"train.out_dir={tmp_path / 'und'}", "data.questions=3"]
    r = subprocess.run([sys.executable, "-m", "puma_nb.train", *args], capture_output=True, text=True,
                       env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_metrics(tmp_path / "und")
    assert len(rows) == 4 and all(r["mse_f0"] == 0 for r in rows)  # understanding: no picture to generate
    model, tok, mcfg = load_mllm(tmp_path / "und" / "model")
    before, _, pre_cfg = load_mllm(tmp_path / "pre")
    assert pre_cfg.image_stride == 0 and mcfg.image_stride == model.image_stride == cfg.image_stride == 384  # the config's, saved
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed and "output_proj.weight" not in changed  # the regression head gets no gradient from answers


def test_instruct_stage_refuses_bad_inputs(tmp_path):
    _init(tmp_path, feature_dim=24)
    base = InstructRunConfig(init=str(tmp_path / "pre"))
    base.data.encoder = str(tmp_path / "clip")
    with pytest.raises(ConfigError, match="reads 24-wide features"): train_instruct(base)
    base.init = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="run the pretraining stage first"): train_instruct(base)
    with pytest.raises(ConfigError): load_config(InstructRunConfig, ROOT / "configs" / "toy" / "t2i.yaml", ["task=captioning"])
    with pytest.raises(ConfigError, match="image_stride 100 is shorter than an image"):
        load_config(InstructRunConfig, ROOT / "configs" / "toy" / "t2i.yaml", ["image_stride=100"])


def test_understanding_can_read_fewer_scales():
    tok = tiny_tokenizer()
    it = InstructData("understanding", 5)[1]
    f = {"image": torch.randn(341, 8)}
    full = build_sequence(tok, instruct_segments(it, f))
    only_f4 = build_sequence(tok, instruct_segments(it, f, input_scales=(4,)))
    assert len(full["input_ids"]) - len(only_f4["input_ids"]) == 340 and torch.equal(only_f4["features"], f["image"][:1])
    assert torch.equal(build_sequence(tok, instruct_segments(it, f, input_scales=(0,)))["features"], f["image"][85:])
    with pytest.raises(ConfigError, match="input_scales must be"):
        load_config(InstructRunConfig, ROOT / "configs" / "toy" / "t2i.yaml", ["task=understanding", "data.input_scales=[5]"])
    with pytest.raises(ConfigError, match="understanding task only"):
        load_config(InstructRunConfig, ROOT / "configs" / "toy" / "t2i.yaml", ["task=t2i", "data.input_scales=[0]"])
    assert load_config(InstructRunConfig, ROOT / "configs" / "toy" / "t2i.yaml", ["task=understanding", "data.input_scales=[2]"]).data.input_scales == (2,)


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
    cfg = ROOT / "configs" / "toy" / "t2i.yaml"
    assert load_config(InstructRunConfig, cfg, ["task=understanding", "data.questions=8"]).data.questions == 8
    with pytest.raises(ConfigError, match="understanding task only"): load_config(InstructRunConfig, cfg, ["task=t2i", "data.questions=2"])
    with pytest.raises(ConfigError, match="at least 1"): load_config(InstructRunConfig, cfg, ["task=understanding", "data.questions=0"])
    with pytest.raises(ConfigError, match="bring their own turns"):
        load_config(InstructRunConfig, cfg, ["task=understanding", "data.questions=2", "data.manifest=x.jsonl"])


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    "A stand-in main-job run folder: a tiny CLIP (clip/model) and an untrained MLLM as the pretraining (pretrain/model)."
    run = tmp_path_factory.mktemp("run")
    _init(run)
    (run / "clip").rename(run / "clip_model"); (run / "clip").mkdir(); (run / "clip_model").rename(run / "clip" / "model")
    (run / "pretrain").mkdir(); (run / "pre").rename(run / "pretrain" / "model")
    return run


def bench(script, *args) -> dict:
    "Run experiments/<script> as a command and read the JSON of its last line."
    import json, os
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_here(monkeypatch, capsys, script, *args) -> dict:
    "Run experiments/<script> in this process (so that a test can swap in an oracle for a model) and read the JSON of its last line."
    import json, runpy
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    runpy.run_path(str(ROOT / "experiments" / script), run_name="__main__")
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_understanding_ablation_script(tmp_path, run_folder, monkeypatch, capsys):
    "experiments/understanding_ablation.py (08_instruct's table): the run it asks for, a second phase, scoring alone; an oracle's answers score 1."
    import json
    from puma_nb import instruct
    from puma_nb.job import PRESETS, job_configs
    run = run_folder
    out = bench("understanding_ablation.py", "--run", run, "--out", tmp_path / "und", "--questions", 3, "--steps", 2, "--scales", 1, "--eval", 6)
    assert (out["questions"], out["steps"], out["scales"]) == (3, 2, [1]) and out["train_seconds"] > 0
    assert out["lr"] == job_configs(PRESETS["toy"])["understanding"].train.lr  # the tiny recipe's, as no --lr was given
    assert json.loads((tmp_path / "und" / "config.json").read_text())["data"]["questions"] == 3  # the run used the conversations
    assert len(read_metrics(tmp_path / "und")) >= 1 and read_metrics(tmp_path / "und")[-1]["step"] == 2
    first = tmp_path / "und" / "model"  # a second phase from it, on all five scales; then the first model scored again, untrained
    again = bench("understanding_ablation.py", "--run", run, "--out", tmp_path / "und2", "--init", first, "--steps", 1, "--eval", 6)
    assert again["scales"] == [4, 3, 2, 1, 0] and again["init"] == str(first)
    assert json.loads((tmp_path / "und2" / "config.json").read_text())["init"] == str(first)
    scored = bench("understanding_ablation.py", "--run", run, "--out", tmp_path / "none", "--init", first, "--steps", 0, "--scales", 1, "--eval", 6)
    assert (scored["accuracy"], scored["per_kind"], scored["train_seconds"]) == (out["accuracy"], out["per_kind"], 0)
    assert not (tmp_path / "none").exists()
    # known answers: the true answers score 1 everywhere; "yes" to everything scores the share of questions whose answer is yes
    qa = [InstructData("understanding", 40, "test", 0)[k] for k in range(40)]
    read = []
    monkeypatch.setattr(instruct, "answer", lambda m, t, e, items, input_scales=None, **kw: read.append(input_scales) or [q["answer"] for q in items])
    oracle = bench_here(monkeypatch, capsys, "understanding_ablation.py", "--run", run, "--out", tmp_path / "x", "--init", first, "--steps", 0,
                        "--scales", 21, "--eval", 40)
    assert read == [(2, 1)] and oracle["accuracy"] == 1.0 and set(oracle["per_kind"]) == {q["kind"] for q in qa}
    assert all(v == 1.0 for v in oracle["per_kind"].values()) and all(v == 1.0 for v in oracle["well_formed"].values())
    monkeypatch.setattr(instruct, "answer", lambda m, t, e, items, **kw: ["yes"] * len(items))
    yes = bench_here(monkeypatch, capsys, "understanding_ablation.py", "--run", run, "--out", tmp_path / "x", "--init", first, "--steps", 0, "--eval", 40)
    assert yes["accuracy"] == pytest.approx(np.mean([q["answer"] == "yes" for q in qa])) and 0 < yes["accuracy"] < 1
    assert yes["per_kind"]["color"] == 0 and yes["well_formed"]["color"] == 0 and yes["well_formed"]["exists"] == 1


def test_understanding_exists_script(run_folder, monkeypatch, capsys):
    "experiments/understanding_exists.py (reports/ablations/understanding_f2_first): the true answers are right in every case, 'no' only where the answer is no."
    from puma_nb import instruct
    run = run_folder
    monkeypatch.setattr(instruct, "answer", lambda m, t, e, items, **kw: [q["answer"] for q in items])
    ex = bench_here(monkeypatch, capsys, "understanding_exists.py", "--run", run, "--model", run / "pretrain" / "model", "--scales", 1, "--n", 30)
    cases = ("yes", "no_colour_absent", "no_other_shape")
    assert ex["questions"] == 30 and sum(ex[k][1] for k in cases) == 30 and all(ex[k][0] == ex[k][1] > 0 for k in cases)
    monkeypatch.setattr(instruct, "answer", lambda m, t, e, items, **kw: ["no"] * len(items))
    no = bench_here(monkeypatch, capsys, "understanding_exists.py", "--run", run, "--model", run / "pretrain" / "model", "--scales", 1, "--n", 30)
    assert no["yes"] == [0, ex["yes"][1]] and all(no[k] == ex[k] for k in cases[1:])


class _Oracle:
    "A stand-in encoder: images → `(B, 256, width)` f0 tokens made by `make(image)`."
    def __init__(self, width, make): self.width, self.make = width, make
    def __call__(self, x): return torch.stack([self.make(im) for im in x])


def test_feature_place_probe_script(run_folder, monkeypatch, capsys):
    "experiments/feature_place_probe.py (08_instruct): tokens that are their place are read exactly; tokens all alike, at chance."
    from puma_nb import pyramid as P
    monkeypatch.setattr(P, "load_encoder", lambda spec: _Oracle(256, lambda im: torch.eye(256)))
    probe = bench_here(monkeypatch, capsys, "feature_place_probe.py", "--clip", run_folder / "clip" / "model", "--train", 20, "--test", 5)
    assert set(probe) == {"f0", "f1"} and (probe["f0"]["chance"], probe["f1"]["chance"]) == (round(1 / 256, 4), round(1 / 64, 4))
    assert all(v[k] == 1.0 for v in probe.values() for k in ("exact", "within_one", "over_objects", "over_background"))
    monkeypatch.setattr(P, "load_encoder", lambda spec: _Oracle(8, lambda im: torch.ones(256, 8)))
    flat = bench_here(monkeypatch, capsys, "feature_place_probe.py", "--clip", run_folder / "clip" / "model", "--train", 20, "--test", 5)
    assert all(v["exact"] == pytest.approx(v["chance"], abs=1e-3) for v in flat.values())  # one place guessed for every token


def _shape_at_centres(im):
    "f0 tokens holding, at each object's centre token, the one-hot of its shape (read back from the picture by the parser)."
    f = torch.zeros(16, 16, len(tw.SHAPES))
    for o in parse(tw.to_image(im)).scene.objects:
        cx, cy = tw.cell_center(o.position)
        f[cy // (tw.SIZE // 16), cx // (tw.SIZE // 16), tw.SHAPES.index(o.shape)] = 1
    return f.reshape(256, -1)


def test_object_shape_probe_script(run_folder, monkeypatch, capsys):
    "experiments/object_shape_probe.py (04_decoder): tokens that hold the shape are read right; tokens all alike give one shape's share."
    from puma_nb import pyramid as P
    monkeypatch.setattr(P, "load_encoder", lambda spec: _Oracle(len(tw.SHAPES), _shape_at_centres))
    shapes = bench_here(monkeypatch, capsys, "object_shape_probe.py", "--clip", run_folder / "clip" / "model", "--train", 40, "--test", 20)
    assert shapes["tokens_per_object"] == 36 and shapes["chance"] == round(1 / 3, 4)
    assert (shapes["all"], shapes["small"], shapes["large"]) == (1.0, 1.0, 1.0)
    monkeypatch.setattr(P, "load_encoder", lambda spec: _Oracle(4, lambda im: torch.ones(256, 4)))
    flat = bench_here(monkeypatch, capsys, "object_shape_probe.py", "--clip", run_folder / "clip" / "model", "--train", 40, "--test", 20)
    ds = tw.ShapesWorld("test", 20, "caption", 0)
    objects = [o for i in range(20) for o in ds.scene(i).objects]
    assert flat["objects"] == shapes["objects"] == len(objects)
    assert flat["all"] == round(np.mean([o.shape == tw.SHAPES[0] for o in objects]), 4)  # every object called the first shape


def test_clip_token_shape_trains_each_trial_clip_with_its_loss(tmp_path):
    "experiments/clip_token_shape.py --train (03_pyramid's trials): two steps of each trial loss, the model where the probes read it."
    for trial in ("recipe", "plain", "hard_negatives"):
        t = bench("clip_token_shape.py", "--train", trial, "--steps", 2, "--out", tmp_path / trial, "--train-n", 40, "--test-n", 10)
        assert t["clip"] == str(tmp_path / trial / "model") and (tmp_path / trial / "model" / "model.safetensors").exists()
        rows = read_metrics(tmp_path / trial)  # the trial's own loss trained it: the recipe's token loss is logged beside the CLIP loss
        assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"]) and (("dense" in rows[-1]) == (trial == "recipe"))


def test_decoder_score_script(tmp_path, run_folder, monkeypatch, capsys):
    "experiments/decoder_score.py (04_decoder, 05_reconstruction): a decoder that gives the picture back keeps everything; a blank one, nothing."
    from puma_nb import reconstruction
    from puma_nb.decoder import save_puma_decoder
    save_puma_decoder(build_decoder(1), tmp_path / "dec" / "unet_64")
    asked = []
    def perfect(D, enc, x, scale, **kw): asked.append((scale, kw["steps"], kw["scheduler"])); return x.clone()
    monkeypatch.setattr(reconstruction, "reconstruct", perfect)
    args = ("--decoders", tmp_path / "dec", "--scale", 1, "--clip", run_folder / "clip" / "model", "--n", 6, "--steps", 2, "--scheduler", "ddpm")
    score = bench_here(monkeypatch, capsys, "decoder_score.py", *args)
    assert asked == [(1, 2, "ddpm")] and (score["scale"], score["n"], score["scheduler"]) == (1, 6, "ddpm")
    assert all(score[k] == 1.0 for k in ("color", "shape", "position", "background", "scene")) and score["psnr_r"] == 100.0
    assert score["colour_lost_as"] == {} and sum(score[k] for k in score if k.startswith("n_")) == 6
    monkeypatch.setattr(reconstruction, "reconstruct", lambda D, enc, x, scale, **kw: torch.zeros_like(x))
    blank = bench_here(monkeypatch, capsys, "decoder_score.py", *args)
    assert blank["color"] == blank["scene"] == 0 and blank["colour_lost_as"] == {"fewer objects": 6}


def test_decoder_generated_features_script(tmp_path, run_folder, monkeypatch, capsys):
    "experiments/decoder_generated_features.py (04_decoder): models that write the encoder's own pyramid have no error, keep all detail, decode as it does."
    from puma_nb import instruct
    from puma_nb.decoder import save_puma_decoder
    from puma_nb.pyramid import pyramid
    run = tmp_path / "run"
    (run / "clip").mkdir(parents=True); (run / "clip" / "model").symlink_to(run_folder / "clip" / "model")
    for i, n in enumerate(SCALES):  # untrained D_0 … D_4, and the pretraining checkpoint as each image-task instruct model
        save_puma_decoder(build_decoder(i), tmp_path / "five" / f"unet_{n}")
    for task in ("t2i", "edit", "conditional"):
        (run / "instruct" / task).mkdir(parents=True); (run / "instruct" / task / "model").symlink_to(run_folder / "pretrain" / "model")
    monkeypatch.setattr(instruct, "generate_pyramids", lambda m, tok, enc, items, scale=0: pyramid(enc(torch.stack([it["image"] for it in items]))))
    gen = bench_here(monkeypatch, capsys, "decoder_generated_features.py", "--run", run, "--decoders", tmp_path / "five", "--scales", 0, 2,
                     "--n", 3, "--steps", 2)
    assert set(gen["features"]) == {"t2i", "edit", "conditional"} and set(gen["features"]["edit"]) == {f"f{i}" for i in range(5)}
    assert all(r["relative_error"] == 0 for t in gen["features"].values() for r in t.values())
    assert all(r["detail_kept"] == 1.0 for t in gen["features"].values() for i, r in t.items() if i != "f4") and "detail_kept" not in gen["features"]["t2i"]["f4"]
    res = gen["decoded"][str(tmp_path / "five")]
    assert set(res["generated"]) == {"f0", "f2"} and set(res["generated"]["f2"]["conditional"]) == set(tw.CONDITION_KINDS)
    probes = res["t2i f0 inputs"]  # the generated f̂_0 is the encoder's f_0, so it decodes to the same pictures (same seed)
    assert len(probes) == 5 and probes["generated f̂0"] == probes["encoder f0"] == res["generated"]["f0"]["t2i"] and probes["↑f̂1"] == probes["its parent ↑f1"]


def test_head_trial_pretrains_with_self_feed_and_scores_f0_alone(tmp_path):
    "experiments/head_trial.py (the trials of 06_mllm): a pretraining with `self_feed`, a t2i model from it, scored with D_0 only, and a conditional model from that t2i model (`--init`)."
    import json, os
    from puma_nb.decoder import save_puma_decoder
    run, out = tmp_path / "run", tmp_path / "trial"
    save_clip(tiny_clip(), TinyClipConfig(), run / "clip" / "model")
    save_puma_decoder(build_decoder(0), run / "decoders" / "unet_256")  # D_0 alone: --decoders 1 needs no other
    args = ["--run", run, "--out", out, "--parent-skip", 1, "--image-pos", 1, "--tasks", "t2i", "--pretrain-steps", 2, "--steps", 1,
            "--self-feed", 1, "--self-feed-passes", 2, "--pretrain-self-feed", 0.5, "--pretrain-self-feed-passes", 2, "--decoders", 1, "--n", 4]
    script = lambda name, *a: subprocess.run([sys.executable, str(ROOT / "experiments" / name), *map(str, a)], capture_output=True, text=True,
                                             env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=300)
    r = script("head_trial.py", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    pre = json.loads((out / "pretrain" / "config.json").read_text())
    assert (pre["loss"]["self_feed"], pre["loss"]["self_feed_passes"], pre["train"]["steps"]) == (0.5, 2, 2)  # the pretraining's own
    assert (pre["model"]["parent_skip"], pre["model"]["image_pos"]) == (True, True)
    inst = json.loads((out / "t2i" / "config.json").read_text())
    assert (inst["loss"]["self_feed"], inst["loss"]["self_feed_passes"], inst["train"]["steps"]) == (1.0, 2, 1)
    assert inst["init"] == str(out / "pretrain" / "model")
    rows = read_metrics(out / "pretrain")  # logged every 20 steps, and at the last
    assert rows[-1]["step"] == 2 and all(np.isfinite(m["loss"]) for m in rows)
    scores = json.loads((out / "scores.json").read_text())
    assert (scores["pretrain_self_feed"], scores["pretrain_self_feed_passes"]) == (0.5, 2)
    assert set(scores["t2i"]) == {"f0", "max5"} and scores["t2i"]["max5"] == scores["t2i"]["f0"]  # one scale: its max is itself
    r = script("head_trial.py", "--run", run, "--out", tmp_path / "from_t2i", "--parent-skip", 1, "--image-pos", 1, "--tasks", "conditional",
               "--init", out / "t2i" / "model", "--steps", 1, "--decoders", 1, "--n", 3)  # a conditional model tuned from that t2i model
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (tmp_path / "from_t2i" / "pretrain").exists()  # --init: no pretraining of its own
    cond = json.loads((tmp_path / "from_t2i" / "conditional" / "config.json").read_text())
    assert (cond["init"], cond["task"], cond["train"]["steps"]) == (str(out / "t2i" / "model"), "conditional", 1)
    scores = json.loads((tmp_path / "from_t2i" / "scores.json").read_text())
    assert scores["init"] == str(out / "t2i" / "model") and set(scores["conditional"]["canny"]["per_scale"]) == {"f0"}
