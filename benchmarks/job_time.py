"""Where the main job's time goes, read from a run folder (its `job.json`, or `report.json`): each stage's seconds, the
lanes and threads each invocation ran with (and, with lanes, each change of their threads), the serial sum, and the critical path through the stage graph (`puma_nb.job.NEEDS`),
which is what the job would take if every stage off that path ran beside it.

    python benchmarks/job_time.py runs/toy
    python benchmarks/job_time.py reports/toy
    python benchmarks/job_time.py --expected toy   # the preset's reference seconds (`Preset.expected_seconds`)

Prints JSON. The README's time line and `Preset.expected_seconds` are read from its output for a `puma-nb toy` run.
"""
import argparse, json
from pathlib import Path

from puma_nb.job import critical_path


def summary(seconds:dict) -> dict:
    "The serial sum of stage seconds and the critical path through the stage graph."
    length, path = critical_path(seconds)
    return {"stage_seconds": seconds, "serial_seconds": round(sum(seconds.values()), 1), "critical_path": path,
            "critical_path_seconds": round(length, 1), "off_critical_path_seconds": round(sum(seconds.values()) - length, 1)}


def job_time(folder) -> dict:
    folder = Path(folder)
    job = json.loads((folder / "job.json").read_text()) if (folder / "job.json").exists() else {}
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").exists() else {}
    seconds = job.get("stage_seconds") or report.get("stage_seconds") or {}
    if not seconds: raise SystemExit(f"{folder}: no job.json or report.json with stage seconds")
    runs = job.get("runs") or report.get("job", {}).get("runs", [])
    log = next((p for p in (folder / "stages" / "threads.jsonl", folder / "threads.jsonl") if p.exists()), None)
    shares = [json.loads(line) for line in log.read_text().splitlines()] if log else []  # each change of the lanes' threads
    return {"folder": str(folder), "machine": report.get("machine"), "wall_seconds": report.get("seconds"),
            "lanes": [r.get("lanes", 1) for r in runs], "threads": [r.get("threads") for r in runs], "invocations": len(runs) or None,
            **summary(seconds), **({"lane_threads": shares} if shares else {})}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", help="a run folder of `puma-nb toy|smoke` (or reports/toy)")
    ap.add_argument("--expected", choices=("toy", "smoke"), help="instead: a preset's reference seconds")
    args = ap.parse_args()
    if args.expected:
        from puma_nb.job import PRESETS
        print(json.dumps({"preset": args.expected, **summary(PRESETS[args.expected].expected_seconds)}, indent=1))
    elif args.folder: print(json.dumps(job_time(args.folder), indent=1))
    else: ap.error("give a run folder or --expected PRESET")
