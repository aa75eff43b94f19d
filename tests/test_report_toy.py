"`reports/toy` is one finished run of `puma-nb toy`, copied whole by `tools/publish_report.py`: its header, its times and its pictures."
import json
from pathlib import Path

import pytest

from puma_nb.job import PRESETS, STAGES, critical_path
from puma_nb.run_eval import rescore

REPORT = Path(__file__).resolve().parents[1] / "reports" / "toy"


def report() -> dict: return json.loads((REPORT / "report.json").read_text())


def test_the_report_is_one_finished_run_at_one_commit():
    "The job wrote the header: one command from an empty folder, every invocation at the same clean commit, nothing pending."
    r = report(); job = r["job"]
    assert r["preset"] == "toy" and not r["pending"] and job["command"].startswith("puma-nb toy")
    assert job["runs"][0]["from"] == "data" and {x["commit"] for x in job["runs"]} == {job["commit"]}, job["runs"]
    assert not job["dirty"] and not any(x["dirty"] for x in job["runs"])
    assert json.loads((REPORT / "job.json").read_text()) == job
    assert job["commit"][:7] in (REPORT / "REPORT.md").read_text()


def test_the_reports_time_is_its_stages_time():
    "Every stage took time (none was copied from an earlier run), and with one lane the wall time is the stages' sum."
    r = report()
    assert list(r["stage_seconds"]) == list(STAGES) and all(s > 0 for s in r["stage_seconds"].values()), r["stage_seconds"]
    assert abs(r["seconds"] - sum(x["seconds"] for x in r["job"]["runs"])) <= 1  # the wall time of every invocation
    if all(x.get("lanes", 1) == 1 for x in r["job"]["runs"]):
        assert abs(r["seconds"] - sum(r["stage_seconds"].values())) <= 0.02 * r["seconds"], (r["seconds"], sum(r["stage_seconds"].values()))


def test_the_reports_samples_are_every_scored_picture_and_rescore_exactly():
    "Anyone can re-score the committed run from its samples alone: the parser's scores come back exactly."
    index = json.loads((REPORT / "samples" / "index.json").read_text())
    assert index and all((REPORT / x["path"]).exists() for x in index)
    assert all((REPORT / x["source"]).exists() for x in index if x.get("source"))
    r, rep = rescore(REPORT), report()
    learned = ("lpips_d", "clip_i", "clip_t", "dino")  # not the parser's: they need the learned models
    for t in ("table2", "table3", "conditional"):
        assert r[t] == {k: {a: v for a, v in row.items() if a not in learned} for k, row in rep[t].items()}, t


def test_the_report_holds_the_toy_bars():
    "The quality bars of 08_instruct's table (and Table 1's), read from the committed run."
    r = report(); t2, t3, c = r["table2"], r["table3"], r["conditional"]
    best = {k: max(t2[f"f{i}"][k] for i in range(5)) for k in ("color", "shape", "position")}
    assert best["color"] >= 0.85 and best["shape"] >= 0.70 and best["position"] >= 0.60, best
    assert all(t2["max5"][k] >= t2[f"f{i}"][k] for k in best for i in range(5)), t2["max5"]
    assert t2["f4"]["lpips_d"] > t2["f1"]["lpips_d"], (t2["f4"]["lpips_d"], t2["f1"]["lpips_d"])
    assert t3["f0"]["edit_success"] >= 0.60 and t3["f0"]["edit_success"] > t3["f1"]["edit_success"]
    assert c["inpaint"]["score"] >= 0.70 and c["colorize"]["score"] >= 0.70, c
    assert r["understanding"]["accuracy"] >= 0.90
    t5 = r["table5"]; assert max(t5["f0"], t5["all"]) > t5["f4"], t5
    psnr = [r["table1"][f"f{i}"]["psnr_r"] for i in range(5)]
    assert psnr[0] >= 24 and psnr[0] > psnr[4], psnr


@pytest.mark.xfail(strict=True, reason="the committed run: canny 26 of 34 (0.765); the bar is 0.80")
def test_the_report_holds_the_canny_bar():
    assert report()["conditional"]["canny"]["score"] >= 0.80


@pytest.mark.xfail(strict=True, reason="the committed run: PSNR_r 27.9, 26.3, 28.6, 29.9, 18.3 dB at f0…f4; f1 to f3 do not fall in order")
def test_table1_psnr_falls_from_f0_to_f4():
    psnr = [report()["table1"][f"f{i}"]["psnr_r"] for i in range(5)]
    assert all(a > b for a, b in zip(psnr, psnr[1:])), psnr


def test_the_eta_reference_is_the_reports_stage_seconds():
    "Preset.expected_seconds (the ETA) and the README's time line come from the committed run."
    r = report()
    assert PRESETS["toy"].expected_seconds == {s: round(v) for s, v in r["stage_seconds"].items()}
    readme = (REPORT.parents[1] / "README.md").read_text()
    length, _ = critical_path(r["stage_seconds"])
    assert f"{round(r['seconds']):,} s" in readme and f"{round(length):,} s" in readme
