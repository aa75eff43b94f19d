"`reports/toy` is one finished run of `puma-nb toy`, copied whole by `tools/publish_report.py`: its header, its times and its pictures."
import json
from pathlib import Path

from puma_nb.job import STAGES
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
