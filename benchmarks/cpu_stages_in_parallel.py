"""Would the main job finish sooner by training two independent stages at once, one thread each, instead of one stage
at a time with both threads? (D_0 … D_4 only need the CLIP; the four instruct models and Table 5's five only need
the pretraining.) Runs `benchmarks/decoder_step.py` and `benchmarks/mllm_step.py` three ways on this machine: alone
with 2 threads, alone with 1 thread, and two copies at once with 1 thread each; prints the seconds per step and the
throughput gain of the two single-threaded copies over one 2-thread process (steps per second, both copies together).

    python benchmarks/cpu_stages_in_parallel.py [--steps 10]
"""
import argparse, json, os, subprocess, sys
from pathlib import Path

HERE = Path(__file__).parent
BENCH = {"decoder D_2 step": [str(HERE / "decoder_step.py"), "--scale", "2", "--batch", "16"],
         "MLLM t2i step": [str(HERE / "mllm_step.py"), "--batch", "16"]}

def launch(args:list[str], threads:int, steps:int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, *args, "--steps", str(steps)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

def seconds(p:subprocess.Popen) -> float:
    out, _ = p.communicate()
    if p.returncode: raise RuntimeError(f"{p.args} failed")
    return json.loads(out[out.index("{"):])["ours_s_per_step"]

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=10, help="timed steps per run (each script also times its plain baseline)")
args = ap.parse_args()
rows = {}
for name, cmd in BENCH.items():
    two = seconds(launch(cmd, 2, args.steps))
    one = seconds(launch(cmd, 1, args.steps))
    pair = [seconds(p) for p in [launch(cmd, 1, args.steps), launch(cmd, 1, args.steps)]]
    rows[name] = {"2 threads, alone": round(two, 4), "1 thread, alone": round(one, 4),
                  "1 thread, two at once": [round(s, 4) for s in pair],
                  "throughput gain of two at once": round(sum(1 / s for s in pair) / (1 / two), 2)}
print(json.dumps({"benchmark": "two 1-thread stages at once vs one 2-thread stage", "cpus": os.cpu_count(), **rows}, indent=1))
