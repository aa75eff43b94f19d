"Helpers shared by the test files (tests/ is on sys.path under pytest's default import mode)."
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_train(config, *overrides, ranks=0):
    "`python -m puma_nb.train --config configs/<config> overrides…` (under torchrun with `ranks` processes); its output, or a failed assert."
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks else [sys.executable])
    cmd += ["-m", "puma_nb.train", "--config", str(ROOT / "configs" / config), *overrides]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr
