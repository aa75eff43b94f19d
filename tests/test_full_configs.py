"The full-scale configs: every stage of App. A, validated, built on the meta device with one forward, and costed."
import dataclasses, json, re, subprocess, sys
from pathlib import Path

import pytest

from puma_nb.decoder import steps_per_scale
from puma_nb.decoder_stage import DecoderRunConfig
from puma_nb.instruct import PAPER_INSTRUCT, InstructRunConfig
from puma_nb.pretrain import PretrainRunConfig
from puma_nb.scaling import full_configs, plan
from puma_nb.train import resolve

ROOT = Path(__file__).resolve().parents[1]
FULL = sorted((ROOT / "configs" / "full").glob("*.yaml"))
MLLM = resolve(ROOT / "configs/full/pretrain.yaml")[0].model


def test_every_stage_of_appendix_a_has_a_full_config():
    names = [p.stem for p in FULL]
    assert names == [f"decoder_f{i}" for i in range(5)] + [f"instruct_{t}" for t in ("conditional", "edit", "t2i", "understanding")] + ["pretrain"]


@pytest.mark.parametrize("path", FULL, ids=lambda p: p.stem)
def test_full_config_builds_on_meta_and_states_its_cost(path):
    cfg = resolve(path)[0]
    text = path.read_text()
    assert all(k in text for k in ("# Hardware:", "# Expected time:", "# A good run:")), "the header says the hardware, the time, a good run"
    gpus = int(re.search(r"on (\d+) H100s", text).group(1))
    r = plan(cfg, gpus, mllm=MLLM)  # builds the model on meta and runs one forward there
    hours = float(re.search(r"Expected time: ~([\d.]+) h", text).group(1))
    assert hours == r["expected_hours"], f"{path.name}: the header says {hours} h, the estimate is now {r['expected_hours']} h"
    assert cfg.train.precision == "bf16" and cfg.train.parallel == "fsdp" and cfg.train.activation_checkpointing
    assert cfg.train.compile == (not isinstance(cfg, DecoderRunConfig))  # measured for the MLLM's layers only
    for w in (8, gpus):  # the paper's global batch from one node or from the header's GPUs, by accumulation
        m, A = cfg.train.accumulation(w)
        assert m * A * w == cfg.train.batch_size
    m, A = dataclasses.replace(cfg.train, micro_batch_size=0).accumulation(256)  # PUMA's 256 GPUs: train.micro_batch_size=0
    assert m * 256 == cfg.train.batch_size and A == 1
    assert r["state_GB_per_gpu"] < 40
    if isinstance(cfg, DecoderRunConfig):
        assert cfg.model.kind == "sdxl" and cfg.init == "sdxl" and cfg.data.encoder == "clip-l" and r["fsdp_units"] == 7
        assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.schedule) == (steps_per_scale(115_000)[cfg.scale], 1024, 8e-5, "linear")
        assert 2.5 < r["params_B"] < 2.7
    elif isinstance(cfg, PretrainRunConfig):
        assert cfg.model.kind == "llama3_8b" and (cfg.train.steps, cfg.train.batch_size, cfg.train.warmup_steps) == (100_000, 2048, 2000)
        assert r["fsdp_units"] == 32 and 8.0 < r["params_B"] < 8.1
    else:
        assert isinstance(cfg, InstructRunConfig) and cfg.init == "runs/full/pretrain/model"
        p = PAPER_INSTRUCT[cfg.task]
        assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps) == (p["steps"], p["batch_size"], p["lr"], p["warmup_steps"])
        assert bool(cfg.data.shards) == (cfg.task == "t2i") and bool(cfg.data.manifest) == (cfg.task != "t2i")


def test_scaling_command_line():
    r = subprocess.run([sys.executable, "-m", "puma_nb.scaling", "configs/full/decoder_f4.yaml", "--gpus", "8", "--gpu", "H200"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["gpus"] == 8 and row["gpu"] == "H200" and row["accumulation"] == 16 and row["expected_hours"] > 4
    assert len(full_configs(ROOT / "configs/full")) == 10
