"The main job: `puma-nb smoke` writes the run folder of DESIGN §6 from a clean start."
import fcntl, json, os, re, subprocess, sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from puma_nb import toyworld as tw
from puma_nb.cli import PRESETS, STAGES, instruct_recipe

ROOT = Path(__file__).resolve().parents[1]
P = PRESETS["smoke"]  # what the smoke job was asked to do; the tests below check that its run folder did it
IMAGE_TASKS = ("t2i", "edit", "conditional")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`puma-nb smoke` from an empty folder, run once per pytest run: xdist workers share the run through a lock and a
    folder of this session. Its folder, standard output and report.json."""
    exe = Path(sys.executable).parent / "puma-nb"
    assert exe.exists(), "the puma-nb console script is not installed: pip install -e ."
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"): base = base.parent  # this session's, shared by its workers
    out, log = base / "smoke_run", base / "smoke_run.json"
    with open(base / "smoke_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits for the one run, then reads it
        if not log.exists():
            # a hang guard, not the smoke bar (report["seconds"] says that): 57 s alone here, 130 s beside another pytest worker.
            # One OpenMP thread, as every other subprocess test: two, beside the other worker on 2 cores, make each of the
            # generation's small ops wait for a descheduled thread, and a CI run once passed 900 s at the t2i stage.
            try:
                r = subprocess.run([str(exe), "smoke", "--out", str(out)], capture_output=True, text=True, timeout=900,
                                   env={"HF_HUB_OFFLINE": "1", "PATH": str(exe.parent) + ":/usr/bin:/bin", "MPLBACKEND": "Agg",
                                        "OMP_NUM_THREADS": "1"})
                res = {"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
            except subprocess.TimeoutExpired as e:
                res = {"returncode": "timed out after 900 s", "stdout": str(e.stdout), "stderr": str(e.stderr)}
            log.write_text(json.dumps(res))
    res = json.loads(log.read_text())
    assert res["returncode"] == 0, f"puma-nb smoke failed ({res['returncode']}):\n{res['stdout'][-5000:]}\n{res['stderr'][-5000:]}"
    return SimpleNamespace(out=out, stdout=res["stdout"], report=json.loads((out / "report.json").read_text()))


def _config(out, d) -> dict:
    return json.loads((out / "instruct" / d / "config.json").read_text())


def test_smoke_clock_prints_each_stage_with_its_eta(smoke):
    "Before each stage, the time so far and the ETA of the rest (JobClock, from Preset.expected_seconds); each stage timed."
    report, n = smoke.report, len(STAGES)
    assert report["preset"] == "smoke" and report["seconds"] > 0
    assert re.search(rf"^\[1/{n}\] {STAGES[0]} · 0:00:0\d so far · about \d+:\d\d:\d\d left$", smoke.stdout, re.M), smoke.stdout[:500]
    assert re.search(rf"^\[{n}/{n}\] {STAGES[-1]} · \d+:\d\d:\d\d so far · ", smoke.stdout, re.M), smoke.stdout[-2000:]
    assert list(report["stage_seconds"]) == list(STAGES) and sum(report["stage_seconds"].values()) <= report["seconds"]


def test_smoke_data_splits_and_manifests(smoke):
    out, splits = smoke.out, smoke.report["dataset"]["splits"]
    assert {k: v["scenes"] for k, v in splits.items()} == {"train": P.n_train, "val": P.n_val, "test": P.n_test}
    assert all(v["parser_exact"] == 1.0 for v in splits.values())
    rows = [json.loads(l) for l in (out / "data" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == P.n_test and all(tw.caption(tw.Scene.from_dict(r["scene"])) == r["caption"] for r in rows)
    train = {json.dumps(json.loads(l)["scene"], sort_keys=True) for l in (out / "data" / "train.jsonl").read_text().splitlines()}
    assert len(train) > 0 and not train & {json.dumps(r["scene"], sort_keys=True) for r in rows}  # disjoint splits
    tasks = [json.loads(l) for l in (out / "data" / "test_tasks.jsonl").read_text().splitlines()]
    assert {t["task"] for t in tasks} == set(tw.TASKS) and len(tasks) == P.n_test * len(tw.TASKS)
    assert {e["kind"] for e in tasks if e["task"] == "edit"} == set(tw.EDIT_KINDS)


def test_smoke_dataset_card(smoke):
    card = (smoke.out / "DATASET_CARD.md").read_text()
    assert f"| test | {P.n_test} |" in card and "recolor" in card


def test_smoke_pyramid_stage_trains_the_clip_and_probes_the_scales(smoke):
    out, pyr = smoke.out, smoke.report["pyramid"]
    assert pyr["clip_steps"] == P.clip_steps and 0 <= pyr["retrieval"]["t2i_top1"] <= 1
    assert set(pyr["probe"]) == {"f0", "f1", "f2", "f3", "f4"} and "encoder" in smoke.report["stand_ins"]
    assert (out / "clip" / "model" / "model.safetensors").exists() and (out / "clip" / "metrics.jsonl").exists()


def test_smoke_decoders_each_train_at_their_lr_and_make_table1(smoke):
    out, report = smoke.out, smoke.report
    assert all((out / "decoders" / f"unet_{n}" / "config.json").exists() for n in (1, 4, 16, 64, 256))
    # each decoder trained at its own peak lr (`Preset.decoder_lr`); D_0's own run folder holds its reader-loss steps, which
    # continue the decay, so its peak is in the run before them (`plain_folder`)
    lr_of = lambda d: json.loads((out / "decoders" / d / "config.json").read_text())["train"]["lr"]
    assert [lr_of("f0/plain")] + [lr_of(f"f{i}") for i in range(1, 5)] == list(P.decoder_lr)
    t1 = report["table1"]
    assert json.loads((out / "table1.json").read_text())["table1"] == t1  # kept for a resumed job
    assert list(t1) == ["f0", "f1", "f2", "f3", "f4"]
    assert all(set(r) >= {"psnr_r", "lpips_r", "psnr_d", "lpips_d", "color", "shape", "position", "background"} for r in t1.values())
    assert "lpips" in report["stand_ins"] and report["table1_info"]["n_images"] == P.table1_n


def test_smoke_samples_index_lists_every_picture(smoke):
    "Figure 3's reconstructions (each Table 1 picture, five scales, two seeds) and each image task's pictures, with their sources."
    out = smoke.out
    index = json.loads((out / "samples" / "index.json").read_text())
    rec = [r for r in index if r["task"] == "reconstruct"]
    assert len(rec) == P.table1_n * 5 * 2 and all((out / r["source"]).exists() for r in rec)
    assert {r["scale"] for r in rec} == {0, 1, 2, 3, 4} and {r["seed"] for r in rec} == {0, 1}
    n_cond = P.eval_n // len(tw.CONDITION_KINDS)  # text-to-image at five scales, edits at two
    assert Counter(r["task"] for r in index) == {"reconstruct": len(rec), "t2i": P.eval_n * 5, "edit": P.eval_n * 2,
                                                 **dict.fromkeys(tw.CONDITION_KINDS, n_cond)}
    assert all((out / r["path"]).exists() for r in index)
    assert all(r["source"] and (out / r["source"]).exists() for r in index if r["task"] in ("edit", *tw.CONDITION_KINDS))


def test_smoke_mllms_start_where_the_preset_says(smoke):
    "The pretraining and instruct models, each image task's model from the one `Preset.instruct_init` names, each with its recipe's λ."
    out, info = smoke.out, smoke.report["mllm_info"]
    assert all((out / d / "model" / "model.safetensors").exists()
               for d in ("pretrain", "instruct/t2i", "instruct/edit", "instruct/conditional", "instruct/understanding"))
    init = {t: _config(out, t)["init"] for t in IMAGE_TASKS}
    assert init == {t: str(out / "instruct" / P.instruct_init[t] / "model") if t in P.instruct_init else str(out / "pretrain" / "model")
                    for t in IMAGE_TASKS}
    assert init["edit"] == str(out / "instruct" / "t2i" / "model")  # the smoke job exercises the chain
    assert info["init"] == P.instruct_init
    assert all(_config(out, t)["train"]["steps"] == P.instruct_steps[t] for t in IMAGE_TASKS)
    # the edit model weighs the tokens its edit changes more (`EDIT_CHANGE_WEIGHT`); the others train on PUMA's Eq. 2
    loss = {t: _config(out, t)["loss"]["change_weight"] for t in IMAGE_TASKS}
    assert loss == {t: instruct_recipe(t, "m", "e").loss.change_weight for t in IMAGE_TASKS} and loss["edit"] > 1
    assert info["change_weight"] == {t: w for t, w in loss.items() if w != 1}


def test_smoke_understanding_models_read_the_scales_the_preset_asks(smoke):
    """The understanding model reads `Preset.understanding_first`'s scales alone first, then all five from that model;
    Table 5's models, one per input, and its all-scale row, each from the pretraining checkpoint."""
    out, info = smoke.out, smoke.report["mllm_info"]
    names = ["understanding_first", "understanding", "understanding_all"] + [f"understanding_f{i}" for i in range(5)]
    assert all((out / "instruct" / d / "model" / "model.safetensors").exists() for d in names)
    cfgs = {d: _config(out, d) for d in names}
    assert all(c["data"]["questions"] == P.questions for c in cfgs.values())
    assert [cfgs[f"understanding_f{i}"]["data"]["input_scales"] for i in range(5)] == [[i] for i in range(5)]
    scales, steps = P.understanding_first.scales, P.understanding_first.steps
    assert (cfgs["understanding_first"]["data"]["input_scales"], cfgs["understanding_first"]["train"]["steps"]) == (list(scales), steps)
    assert cfgs["understanding"]["data"]["input_scales"] == [4, 3, 2, 1, 0]
    assert cfgs["understanding"]["init"] == str(out / "instruct" / "understanding_first" / "model")
    assert cfgs["understanding_all"]["init"] == cfgs["understanding_f0"]["init"] == str(out / "pretrain" / "model")
    assert cfgs["understanding_all"]["data"]["input_scales"] == [4, 3, 2, 1, 0]
    assert info["understanding_first"] == {"scales": list(scales), "steps": steps}


def test_smoke_tables_2_3_5_conditional_and_understanding(smoke):
    report = smoke.report
    t2, t3 = report["table2"], report["table3"]
    assert list(t2) == ["f0", "f1", "f2", "f3", "f4", "max5"] and "lpips_d" in t2["f4"]
    assert all(t2["max5"][k] >= t2[f"f{i}"][k] - 1e-9 for k in ("color", "shape") for i in range(5))
    assert set(t3) == {"f0", "f1", "f2", "f3", "f4", "max5"} and 0 <= t3["f0"]["edit_success"] <= 1
    assert {"clip_i", "clip_t", "dino"} <= set(t3["f0"]) and {"clip_i", "clip_t"} <= set(t2["max5"])
    assert "stand-in" in report["stand_ins"]["clip_b32"] and "stand-in" in report["stand_ins"]["dino"]
    assert set(report["conditional"]) == set(tw.CONDITION_KINDS)
    assert all(set(r["per_scale"]) == {f"f{i}" for i in range(5)} and r["score"] == r["per_scale"]["f0"] and r["max5"] >= r["score"]
               for r in report["conditional"].values())
    und = report["understanding"]
    assert 0 <= und["accuracy"] <= 1 and set(und["well_formed"]) <= set(und["per_kind"])
    assert list(report["table5"]) == ["f4", "f3", "f2", "f1", "f0", "all"] and all(0 <= v <= 1 for v in report["table5"].values())


def test_smoke_report_text_and_figures(smoke):
    out = smoke.out
    text = (out / "REPORT.md").read_text()
    assert "its numbers mean nothing" in "\n".join(text.splitlines()[:4])  # said at the top: a smoke run checks plumbing only
    assert "first reads only f2 for 1 steps" in text  # the smoke preset's understanding_first, UnderstandingFirst((2,), 1)
    assert "edit weighs each token its edit changes as 4 kept ones" in text and "edit starts from the finished t2i model" in text
    assert "an answer of the asked kind" in text
    assert "| task | what must be right | score (f0) | whole scene (f0) | f1 | f2 | f3 | f4 | max5 |" in text
    assert all(h in text for h in ("## Table 1", "## Table 2", "## Table 3", "## Table 5", "### Understanding", "## Conditional generation"))
    assert all((out / f).exists() for f in ("figure3.png", "figure6.png", "figure9.png", "figure10.png", "figure_conditional.png"))
    w, h = Image.open(out / "gallery.png").size
    assert w > 500 and h > 500


def test_bad_preset_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "puma_nb.cli", "huge"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "invalid choice: 'huge'" in r.stderr


def test_a_preset_whose_models_start_from_a_later_one_is_a_clear_error():
    "Preset.instruct_init names, for an image task, a task trained before it (INSTRUCT_TASKS' order)."
    from puma_nb.cli import Preset
    with pytest.raises(ValueError, match=r"instruct_init\['t2i'\] = 'edit': a model starts from one trained before it"):
        Preset("bad", 10, 10, 10, instruct_init={"t2i": "edit"})
    with pytest.raises(ValueError, match=r"instruct_init\['edit'\] = 'pretrain'"):
        Preset("bad", 10, 10, 10, instruct_init={"edit": "pretrain"})
    with pytest.raises(ValueError, match="'understanding' is not an image task"):
        Preset("bad", 10, 10, 10, instruct_init={"understanding": "t2i"})
    assert Preset("plain", 10, 10, 10, instruct_init={}).instruct_init == {}  # every model from the pretraining, as PUMA
    assert PRESETS["toy"].instruct_init == {"edit": "t2i", "conditional": "t2i"}  # the toy recipe: both from the text-to-image model


def test_the_understanding_models_first_phase_is_named_or_none():
    "Preset.understanding_first: an UnderstandingFirst(scales, steps), or None for PUMA's one phase from the pretraining."
    from puma_nb.cli import Preset, UnderstandingFirst
    assert PRESETS["toy"].understanding_first == UnderstandingFirst(scales=(2,), steps=1500)
    assert Preset("plain", 10, 10, 10, understanding_first=None).understanding_first is None
    with pytest.raises(TypeError, match="an UnderstandingFirst"):
        Preset("bad", 10, 10, 10, understanding_first=((2,), 1500))
    with pytest.raises(ValueError, match="scales among 0"):
        UnderstandingFirst(scales=(5,))
    with pytest.raises(ValueError, match="at least 1"):
        UnderstandingFirst(steps=0)


def test_both_presets_have_an_eta_for_every_stage():
    "The main job's ETA needs each stage's reference seconds (Preset.expected_seconds, measured on the 2-core CPU)."
    from puma_nb.cli import PRESETS, STAGES, Preset
    assert all(set(p.expected_seconds) == set(STAGES) for p in PRESETS.values())
    with pytest.raises(ValueError, match=r"unknown stages \['decoder'\]"):
        Preset("bad", 10, 10, 10, expected_seconds={"decoder": 60})


def test_config_file_matches_the_main_jobs_decoder_recipe():
    from puma_nb.cli import decoder_recipe
    from puma_nb.config import load_config, to_dict
    from puma_nb.decoder import DecoderRunConfig
    a = to_dict(load_config(DecoderRunConfig, ROOT / "configs" / "decoder_tiny.yaml"))
    b = to_dict(decoder_recipe("runs/clip/model"))
    assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def test_config_files_match_the_main_jobs_mllm_recipes():
    from puma_nb.cli import instruct_recipe, pretrain_recipe
    from puma_nb.config import load_config, to_dict
    from puma_nb.instruct import INSTRUCT_TASKS, InstructRunConfig
    from puma_nb.pretrain import PretrainRunConfig
    a = to_dict(load_config(PretrainRunConfig, ROOT / "configs" / "pretrain_tiny.yaml"))
    b = to_dict(pretrain_recipe("runs/clip/model"))
    assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    per_task = {"edit": ["loss.change_weight=4"]}  # the edit model's λ (`EDIT_CHANGE_WEIGHT`), as the file's header writes its command
    for task in INSTRUCT_TASKS:
        a = to_dict(load_config(InstructRunConfig, ROOT / "configs" / "instruct_tiny.yaml",
                                [f"task={task}", f"train.out_dir=runs/instruct/{task}", *per_task.get(task, [])]))
        b = to_dict(instruct_recipe(task, "runs/pretrain/model", "runs/clip/model"))
        assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert instruct_recipe("edit", "m", "e").loss.change_weight == 4 and instruct_recipe("conditional", "m", "e").loss.change_weight == 1


def _instruct_header_commands() -> list[list[str]]:
    "The arguments after `instruct_tiny.yaml` of each command in configs/instruct_tiny.yaml's header, continued lines joined."
    text = (ROOT / "configs" / "instruct_tiny.yaml").read_text()
    header = "\n".join(l.lstrip("# ") for l in text.splitlines() if l.startswith("#")).replace("\\\n", " ")
    return [l.split("instruct_tiny.yaml", 1)[1].split() for l in header.splitlines() if "instruct_tiny.yaml" in l and "task=" in l]


def test_the_instruct_configs_edit_and_conditional_commands_start_from_the_t2i_model():
    "configs/instruct_tiny.yaml's header gives the main job's edit and conditional runs, each from the t2i run's model (`Preset.instruct_init`), with their recipe's loss."
    from puma_nb.cli import PRESETS, instruct_recipe
    from puma_nb.config import load_config
    from puma_nb.instruct import InstructRunConfig
    path = ROOT / "configs" / "instruct_tiny.yaml"
    lines = [c for c in _instruct_header_commands() if "task=understanding" not in c]
    runs = {c.task: c for c in (load_config(InstructRunConfig, path, a) for a in lines)}
    assert len(runs) == len(lines), lines  # one command a task
    p = PRESETS["toy"]
    assert set(runs) == {"t2i", *p.instruct_init} and runs["t2i"].init == "runs/pretrain/model"
    for task, src in p.instruct_init.items():
        assert runs[task].init == runs[src].train.out_dir + "/model" and runs[task].train.out_dir == f"runs/instruct/{task}"
        n = p.instruct_steps[task]
        assert (runs[task].train.steps, runs[task].train.warmup_steps) == (n, max(1, n // 20))  # as `build_mllms` sets them
        assert runs[task].loss == instruct_recipe(task, "m", "e").loss  # the edit command carries the recipe's λ


def test_the_instruct_configs_two_understanding_commands_are_the_main_jobs():
    "configs/instruct_tiny.yaml's header gives the two runs of the main job's understanding model (`Preset.understanding_first`)."
    from puma_nb.cli import PRESETS
    from puma_nb.config import load_config
    from puma_nb.instruct import InstructRunConfig
    path = ROOT / "configs" / "instruct_tiny.yaml"
    cmds = [c for c in _instruct_header_commands() if "task=understanding" in c]
    assert len(cmds) == 2, cmds
    first, second = (load_config(InstructRunConfig, path, c) for c in cmds)
    p = PRESETS["toy"]
    scales, n1 = p.understanding_first.scales, p.understanding_first.steps
    assert (first.data.input_scales, first.train.steps, first.train.warmup_steps) == (scales, n1, max(1, n1 // 20))
    assert first.data.questions == second.data.questions == p.questions
    assert second.init == first.train.out_dir + "/model" and second.data.input_scales == (4, 3, 2, 1, 0)
    assert second.train.steps == p.instruct_steps["understanding"]


def test_the_instruct_configs_t2i_command_is_the_main_jobs():
    "configs/instruct_tiny.yaml's header gives the main job's text-to-image run (its steps, `Preset.instruct_steps`, and warm-up)."
    from puma_nb.cli import PRESETS
    from puma_nb.config import load_config
    from puma_nb.instruct import InstructRunConfig
    path = ROOT / "configs" / "instruct_tiny.yaml"
    cmds = [c for c in _instruct_header_commands() if "task=t2i" in c]
    assert len(cmds) == 1
    cfg, n = load_config(InstructRunConfig, path, cmds[0]), PRESETS["toy"].instruct_steps["t2i"]
    assert (cfg.task, cfg.train.steps, cfg.train.warmup_steps) == ("t2i", n, max(1, n // 20))  # as `build_mllms` sets them


def test_figure_titles_keep_the_whole_caption():
    "figure6/figure10's column titles: a long caption wraps onto as many lines as it needs, cut nowhere."
    import matplotlib; matplotlib.use("Agg")
    import torch
    from puma_nb.cli import picture_grid
    caption = "a small purple triangle at the bottom right and a large yellow square at the top left on a gray background"
    fig = picture_grid([[torch.rand(3, 64, 64)]], ["f0"], [caption])
    assert fig.axes[0].get_title().replace("\n", " ") == caption
