"""Copy a finished `puma-nb toy` run's report into `reports/toy`: REPORT.md, report.json, job.json, the dataset card, the
figures, `samples/` (every scored picture and its index), `configs/` (the configs each run trained) and the lanes'
thread log. Models and checkpoints stay in the run folder. The old report is replaced whole; nothing is edited.

    python tools/publish_report.py runs/toy            # into reports/toy
    python tools/publish_report.py RUN --to DIR
"""
import argparse, json, shutil
from pathlib import Path

FILES = ("REPORT.md", "report.json", "job.json", "DATASET_CARD.md")
FOLDERS = ("samples", "configs")


def publish(run:Path, to:Path) -> list[str]:
    "Copy the report files of `run` into an emptied `to`; returns what was copied. Refuses a run that has not finished."
    report = json.loads((run / "report.json").read_text())
    if report.get("pending"): raise SystemExit(f"{run}: stages {report['pending']} have not finished; resume the run first")
    missing = [f for f in FILES + FOLDERS if not (run / f).exists()]
    if missing: raise SystemExit(f"{run}: no {missing}; is it a `puma-nb toy` run folder?")
    if to.exists(): shutil.rmtree(to)
    to.mkdir(parents=True)
    names = [*FILES, *sorted(p.name for p in run.glob("*.png"))]
    for f in names: shutil.copy2(run / f, to / f)
    for d in FOLDERS: shutil.copytree(run / d, to / d)
    if (run / "stages" / "threads.jsonl").exists():
        shutil.copy2(run / "stages" / "threads.jsonl", to / "threads.jsonl"); names.append("threads.jsonl")
    return names + [f"{d}/" for d in FOLDERS]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder of `puma-nb toy`")
    ap.add_argument("--to", type=Path, default=Path("reports/toy"))
    args = ap.parse_args()
    print("\n".join(publish(args.run, args.to)))
