"""Do lanes pay on this machine? Compares a `puma-nb toy --lanes N` run (finished or stopped) with a finished one-lane
`puma-nb toy` run of the same recipe: how long one lane takes for exactly the work the lanes did in their wall time.

    python experiments/lanes_vs_one.py --lanes RUN_A --one RUN_B --one-log B.log --out DIR

The lanes run's finished stages count at the one-lane run's `stage_seconds`. A stage the lanes run was stopped inside
(`stages/<stage>.stopped.json`: where, step) counts at the one-lane run's elapsed time at that step, read from its
progress bar in the log (setup before the bar's first step is left out, which favours one lane). Prints JSON and writes it
to DIR/result.json.
"""
import argparse, json, re
from datetime import datetime
from pathlib import Path

BAR = re.compile(r"^(?P<desc>[^:\r\n|]+):\s+\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+) \[(?P<elapsed>[\d:]+)<")


def seconds(clock:str) -> int:
    "'1:02:03' or '02:03' as seconds."
    out = 0
    for part in clock.split(":"): out = out * 60 + int(part)
    return out


def bar_elapsed(log:Path, desc:str, step:int) -> list[int]:
    "Every elapsed time (seconds) a progress bar named `desc` shows at `step`, in the order the log has them."
    found = []
    for line in log.read_text(errors="replace").replace("\r", "\n").splitlines():
        m = BAR.match(line.strip())
        if m and m["desc"].strip() == desc and int(m["n"]) == step: found.append(seconds(m["elapsed"]))
    return found


def stopped_at(run:Path) -> dict:
    "Each stopped stage of a lanes run: {stage: (phase or stage, step)}."
    out = {}
    for f in sorted((run / "stages").glob("*.stopped.json")):
        s = json.loads(f.read_text())
        phase = re.search(r"\((\w+)\)", s["where"])
        out[f.name.split(".")[0]] = (phase[1] if phase else s["where"], s["step"])
    return out


def wall_seconds(run:Path, job:dict) -> float:
    """The invocations' wall seconds (`runs[].seconds`); for a run of one invocation from before job.json kept them, from
    its start to the last moment a lane wrote that it stopped."""
    if all(r.get("seconds") for r in job["runs"]): return round(sum(r["seconds"] for r in job["runs"]), 1)
    stops = list((run / "stages").glob("*.stopped.json"))
    if len(job["runs"]) > 1 or not stops: raise SystemExit(f"{run}: job.json does not say how long its invocations ran")
    return round(max(f.stat().st_mtime for f in stops) - datetime.fromisoformat(job["started"]).timestamp(), 1)


BAR_NAMES = {"edit": "instruct edit", "understanding_first": "instruct understanding", "understanding": "instruct understanding",
             "conditional": "instruct conditional", "t2i": "instruct t2i", "pretrain": "pretrain", "clip": "clip"}


def compare(lanes_run:Path, one_run:Path, one_log:Path) -> dict:
    a, b = (json.loads((r / "job.json").read_text()) for r in (lanes_run, one_run))
    wall = wall_seconds(lanes_run, a)
    rows, stopped = {s: b["stage_seconds"][s] for s in a["stage_seconds"]}, stopped_at(lanes_run)
    for stage, (phase, step) in stopped.items():
        times = bar_elapsed(one_log, BAR_NAMES[phase], step)
        if not times: raise SystemExit(f"{one_log}: no progress bar {BAR_NAMES[phase]!r} at step {step}")
        rows[f"{stage} to {phase} step {step}"] = times[0]  # the first: a phase's bar before any later phase of the same name
    one = round(sum(rows.values()), 1)
    return {"lanes_run": {"commit": a["commit"], "command": a["command"], "wall_seconds": wall, "stage_seconds": a["stage_seconds"],
                          "stopped": {k: list(v) for k, v in stopped.items()}},
            "one_lane_run": {"commit": b["commit"], "command": b["command"]},
            "one_lane_seconds_for_that_work": rows, "one_lane_total": one, "speedup": round(one / wall, 2)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", type=Path, required=True, help="run folder of `puma-nb toy --lanes N`")
    ap.add_argument("--one", type=Path, required=True, help="finished run folder of `puma-nb toy`")
    ap.add_argument("--one-log", type=Path, required=True)
    ap.add_argument("--out", type=Path, help="also write DIR/result.json")
    args = ap.parse_args()
    result = compare(args.lanes, args.one, args.one_log)
    print(json.dumps(result, indent=1))
    if args.out: args.out.mkdir(parents=True, exist_ok=True); (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
