"The main job: `puma-nb smoke` writes its run folder from a clean start, training the files of configs/toy/."
import fcntl, json, os, re, subprocess, sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from puma_nb import toyworld as tw
from puma_nb.job import PRESETS, STAGES, job_configs

ROOT = Path(__file__).resolve().parents[1]
P = PRESETS["smoke"]  # what the smoke job was asked to do; the tests below check that its run folder did it
TOY = job_configs(PRESETS["toy"])  # the recipe: configs/toy/, as `puma-nb toy` trains it
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
                r = subprocess.run([str(exe), "smoke", "--out", str(out), "--lanes", "2"], capture_output=True, text=True, timeout=900,
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
    lane = r"( · lane \d of 2, \d threads?)?"  # the smoke job runs in two lanes
    assert re.search(rf"^\[1/{n}\] {STAGES[0]} · 0:00:0\d so far · about \d+:\d\d:\d\d left{lane}$", smoke.stdout, re.M), smoke.stdout[:500]
    assert re.search(rf"^\[{n}/{n}\] {STAGES[-1]} · \d+:\d\d:\d\d so far · ", smoke.stdout, re.M), smoke.stdout[-2000:]
    assert list(report["stage_seconds"]) == list(STAGES) and all(v > 0 for v in report["stage_seconds"].values())
    from puma_nb.job import critical_path  # two lanes: the wall time lies between the critical path and the serial sum
    assert critical_path(report["stage_seconds"])[0] - 2 <= report["seconds"] <= sum(report["stage_seconds"].values()) + 2


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
    assert pyr["clip_steps"] == P.max_steps and 0 <= pyr["retrieval"]["t2i_top1"] <= 1
    assert set(pyr["probe"]) == {"f0", "f1", "f2", "f3", "f4"} and "encoder" in smoke.report["stand_ins"]
    assert (out / "clip" / "model" / "model.safetensors").exists() and (out / "clip" / "metrics.jsonl").exists()


def test_smoke_decoders_each_train_at_their_files_lr_and_make_table1(smoke):
    out, report = smoke.out, smoke.report
    assert all((out / "decoders" / f"unet_{n}" / "config.json").exists() for n in (1, 4, 16, 64, 256))
    # each decoder trained at its file's peak lr; D_0's own run folder holds its reader-loss steps, which continue the
    # decay, so its peak is in the run before them (`plain_folder`)
    lr_of = lambda d: json.loads((out / "decoders" / d / "config.json").read_text())["train"]["lr"]
    assert [lr_of("f0/plain")] + [lr_of(f"f{i}") for i in range(1, 5)] == [TOY[f"decoder_f{i}"].train.lr for i in range(5)] == [3e-3] + [1e-3] * 4
    t1 = report["table1"]
    assert json.loads((out / "table1.json").read_text())["table1"] == t1  # kept for a resumed job
    assert list(t1) == ["f0", "f1", "f2", "f3", "f4"]
    assert all(set(r) >= {"psnr_r", "lpips_r", "psnr_d", "lpips_d", "color", "shape", "position", "background"} for r in t1.values())
    assert "lpips" in report["stand_ins"] and report["table1_info"]["n_images"] == P.table1_n


def _flat(d:dict, prefix="") -> dict:
    return {k2: v2 for k, v in d.items() for k2, v2 in (_flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])}


def test_smoke_trains_each_file_of_configs_toy_with_only_the_documented_overrides(smoke):
    """Each run of the job is its file in configs/toy/ (`RUNS`), changed only where `preset_overrides` documents: the run folder,
    the CLIP's test size and the smoke preset's step cut. The run's own config.json (written by `fit`) says the same."""
    from puma_nb.config import from_dict, read_yaml, to_dict
    from puma_nb.job import CONFIGS, RUN_CONFIGS, RUNS
    documented = {"train.out_dir", "export_dir", "init", "data.encoder", "data.n_test", "train.steps", "train.warmup_steps", "reader_steps"}
    names, out = [n for ns in RUNS.values() for n in ns], smoke.out
    assert sorted(p.stem for p in out.joinpath("configs").iterdir()) == sorted(names) == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    for name in names:
        d = read_yaml(CONFIGS / f"{name}.yaml")
        file, trained = _flat(to_dict(from_dict(RUN_CONFIGS[d["stage"]], d))), _flat(read_yaml(out / "configs" / f"{name}.yaml"))
        changed = {k for k in file if file[k] != trained[k]}
        assert changed <= documented, (name, {k: (file[k], trained[k]) for k in changed - documented})
        assert trained["train.steps"] == min(file["train.steps"], P.max_steps)
        assert all(str(trained[k]).startswith(str(out)) for k in ("train.out_dir", "data.encoder") if k in trained)
        if d["stage"] not in ("decoder", "clip"):  # a decoder's config.json is its last phase's (`train_decoder`)
            ran = _flat(json.loads((Path(trained["train.out_dir"]) / "config.json").read_text()))
            assert {k: ran[k] for k in trained} == trained, name


def test_the_toy_job_trains_the_files_exactly():
    "`puma-nb toy` trains each file of configs/toy/ as `python -m puma_nb.train --config` reads it: no override at all."
    from puma_nb.config import read_yaml, to_dict
    from puma_nb.job import CONFIGS, preset_overrides
    from puma_nb.train import resolve
    for name, cfg in TOY.items():
        assert preset_overrides(PRESETS["toy"], read_yaml(CONFIGS / f"{name}.yaml")) == []
        assert to_dict(cfg) == to_dict(resolve(CONFIGS / f"{name}.yaml")[0]), name
    # the recipe's chain, read from the files: edit and conditional from the t2i model, understanding from its f2 phase
    assert TOY["edit"].init == TOY["conditional"].init == TOY["t2i"].train.out_dir + "/model"
    assert TOY["understanding"].init == TOY["understanding_first"].train.out_dir + "/model"
    assert TOY["decoder_f1"].init == TOY["decoder_f0"].train.out_dir + "/plain/unet_256" and TOY["decoder_f2"].init.endswith("decoders/unet_64")
    assert TOY["edit"].loss.change_weight == 4 and {TOY[t].loss.change_weight for t in ("t2i", "conditional")} == {1.0}


def test_smoke_samples_index_lists_every_picture(smoke):
    "Figure 3's reconstructions (each Table 1 picture, five scales, two seeds) and each image task's pictures, with their sources."
    out = smoke.out
    index = json.loads((out / "samples" / "index.json").read_text())
    rec = [r for r in index if r["task"] == "reconstruct"]
    assert len(rec) == P.table1_n * 5 * 2 and all((out / r["source"]).exists() for r in rec)
    assert {r["scale"] for r in rec} == {0, 1, 2, 3, 4} and {r["seed"] for r in rec} == {0, 1}
    n_cond = P.eval_n // len(tw.CONDITION_KINDS)  # every picture a table scored: text-to-image at five scales and two seeds,
    assert Counter(r["task"] for r in index) == {"reconstruct": len(rec), "t2i": P.eval_n * 5 * 2, "edit": P.eval_n * 5,  # the rest at five
                                                 **dict.fromkeys(tw.CONDITION_KINDS, n_cond * 5)}
    assert all((out / r["path"]).exists() for r in index)
    assert all(r["source"] and (out / r["source"]).exists() for r in index if r["task"] in ("edit", *tw.CONDITION_KINDS))


def test_smoke_samples_rescore_to_the_reports_exact_scores(smoke):
    "Anyone can re-score a run from samples/ alone: the parser's scores of Tables 2 and 3 and conditional generation come back exactly."
    from puma_nb.run_eval import rescore
    r, report = rescore(smoke.out), smoke.report
    learned = ("lpips_d", "clip_i", "clip_t", "dino")  # not the parser's: they need the learned models
    for t in ("table2", "table3", "conditional"):
        assert r[t] == {k: {a: v for a, v in row.items() if a not in learned} for k, row in report[t].items()}, t


def test_smoke_mllms_start_where_their_files_say(smoke):
    "The pretraining and instruct models, each image task's model from the one its file names, each with its file's λ."
    out, info = smoke.out, smoke.report["mllm_info"]
    assert all((out / d / "model" / "model.safetensors").exists()
               for d in ("pretrain", "instruct/t2i", "instruct/edit", "instruct/conditional", "instruct/understanding"))
    init = {t: _config(out, t)["init"] for t in IMAGE_TASKS}
    assert init == {"t2i": str(out / "pretrain" / "model"), "edit": str(out / "instruct" / "t2i" / "model"),
                    "conditional": str(out / "instruct" / "t2i" / "model")}
    assert info["init"] == {"edit": "t2i", "conditional": "t2i"}
    assert all(_config(out, t)["train"]["steps"] == P.max_steps for t in IMAGE_TASKS)
    loss = {t: _config(out, t)["loss"]["change_weight"] for t in IMAGE_TASKS}
    assert loss == {t: TOY[t].loss.change_weight for t in IMAGE_TASKS} and loss["edit"] > 1
    assert info["change_weight"] == {t: w for t, w in loss.items() if w != 1}


def test_smoke_understanding_models_read_the_scales_their_files_ask(smoke):
    """The understanding model reads f2 alone first, then all five from that model; Table 5's models, one per input, and
    its all-scale row, each from the pretraining checkpoint."""
    out, info = smoke.out, smoke.report["mllm_info"]
    names = ["understanding_first", "understanding", "understanding_all"] + [f"understanding_f{i}" for i in range(5)]
    assert all((out / "instruct" / d / "model" / "model.safetensors").exists() for d in names)
    cfgs = {d: _config(out, d) for d in names}
    assert all(c["data"]["questions"] == 8 for c in cfgs.values())
    assert [cfgs[f"understanding_f{i}"]["data"]["input_scales"] for i in range(5)] == [[i] for i in range(5)]
    assert cfgs["understanding_first"]["data"]["input_scales"] == [2]
    assert cfgs["understanding"]["data"]["input_scales"] == [4, 3, 2, 1, 0]
    assert cfgs["understanding"]["init"] == str(out / "instruct" / "understanding_first" / "model")
    assert cfgs["understanding_all"]["init"] == cfgs["understanding_f0"]["init"] == str(out / "pretrain" / "model")
    assert cfgs["understanding_all"]["data"]["input_scales"] == [4, 3, 2, 1, 0]
    assert info["understanding_first"] == {"scales": [2], "steps": P.max_steps}


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
    assert f"first reads only f2 for {P.max_steps} steps" in text  # configs/toy/understanding_first.yaml, cut to the smoke's steps
    assert "**commit** `" in text and "**command** `puma-nb smoke --out " in text  # the header, written by the job
    job = json.loads((out / "job.json").read_text())
    assert len(job["runs"]) == 1 and job["runs"][0]["from"] == "data" and smoke.report["job"]["commit"] == job["commit"]
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


def test_both_presets_have_an_eta_for_every_stage():
    "The main job's ETA needs each stage's reference seconds (Preset.expected_seconds, measured on the 2-core CPU)."
    from puma_nb.job import PRESETS, STAGES, Preset
    assert all(set(p.expected_seconds) == set(STAGES) for p in PRESETS.values())
    with pytest.raises(ValueError, match=r"unknown stages \['decoder'\]"):
        Preset("bad", 10, 10, 10, expected_seconds={"decoder": 60})


def test_figure_titles_keep_the_whole_caption():
    "figure6/figure10's column titles: a long caption wraps onto as many lines as it needs, cut nowhere."
    import matplotlib; matplotlib.use("Agg")
    import torch
    from puma_nb.run_eval import picture_grid
    caption = "a small purple triangle at the bottom right and a large yellow square at the top left on a gray background"
    fig = picture_grid([[torch.rand(3, 64, 64)]], ["f0"], [caption])
    assert fig.axes[0].get_title().replace("\n", " ") == caption


def test_smoke_lanes_share_the_cores_as_they_start_and_end(smoke):
    "Two lanes: each change of their threads is logged, together they hold exactly the cores, and a lane left alone takes them all."
    from puma_nb.job import cores
    log = [json.loads(line) for line in (smoke.out / "stages" / "threads.jsonl").read_text().splitlines()]
    n = cores()
    assert log[0]["second"] == 0 and set(log[0]["threads"]) == {"data", "clip"}  # the first two stages start together
    assert all(1 <= len(e["threads"]) <= 2 and sum(e["threads"].values()) == n for e in log)
    assert [e["second"] for e in log] == sorted(e["second"] for e in log)
    assert any(len(e["threads"]) == 1 for e in log)  # the evaluation, at least, runs alone: with all n cores
    assert set().union(*(e["threads"] for e in log)) == set(STAGES)
    for s in STAGES: assert int((smoke.out / "stages" / f"{s}.threads").read_text()) >= 1  # each lane's file, as it last read it


def test_publish_report_copies_a_finished_run_and_refuses_an_unfinished_one(smoke, tmp_path):
    "tools/publish_report.py: the report, its samples and configs, never the models; the copy re-scores as the run does."
    tool = [sys.executable, str(ROOT / "tools" / "publish_report.py")]
    r = subprocess.run(tool + [str(smoke.out), "--to", str(tmp_path / "rep")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rep = tmp_path / "rep"
    assert json.loads((rep / "report.json").read_text()) == smoke.report and (rep / "job.json").exists()
    assert sorted(p.name for p in (rep / "configs").iterdir()) == sorted(p.name for p in (smoke.out / "configs").iterdir())
    assert not any((rep / d).exists() for d in ("clip", "decoders", "pretrain", "instruct", "stages"))
    from puma_nb.run_eval import rescore
    assert rescore(rep) == rescore(smoke.out)
    index = json.loads((rep / "samples" / "index.json").read_text())
    assert index and all((rep / r["path"]).exists() for r in index)  # every scored picture travels with the report
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "report.json").write_text(json.dumps({**smoke.report, "pending": ["edit", "evaluation"]}))
    r = subprocess.run(tool + [str(unfinished), "--to", str(tmp_path / "rep")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "have not finished" in r.stderr and (rep / "report.json").exists()  # the old copy kept


def test_job_time_reads_the_stage_seconds_and_the_critical_path(smoke):
    "benchmarks/job_time.py: each stage's seconds, their serial sum, the threads, and the longest chain through `NEEDS`."
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "job_time.py"), str(smoke.out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    sec = smoke.report["stage_seconds"]
    assert t["stage_seconds"] == sec and t["serial_seconds"] == pytest.approx(sum(sec.values()), abs=0.2)
    assert t["critical_path_seconds"] - 2 <= smoke.report["seconds"] <= t["serial_seconds"] + 2  # two lanes: in between
    assert all(v > 0 for v in sec.values()) and t["invocations"] == 1 and t["lanes"] == [2]
    assert t["critical_path"][-1] == "evaluation" and t["critical_path_seconds"] <= t["serial_seconds"]
    from puma_nb.job import NEEDS
    path = t["critical_path"]
    assert all(a in NEEDS[b] for a, b in zip(path, path[1:]))  # a chain of the stage graph
