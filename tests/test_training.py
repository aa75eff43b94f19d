"The shared training loop: exact resume (stop, SIGTERM, SIGKILL), torchrun == one process, accumulation, configs, precision."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
import yaml

from puma_nb.checkpoints import checkpoint_weights, latest_checkpoint, read_metrics
from puma_nb.config import ConfigError, to_dict
from puma_nb.probe import ProbeDataConfig, ProbeModelConfig, ProbeRunConfig, train_probe
from puma_nb.train import main as train_main, resolve
from puma_nb.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def probe_cfg(out, steps=40, dropout=0.1, batch=16, micro=0, **train):
    # fp32 unless a test asks: these tests compare runs to the bit or to 1e-5, and `auto` is bf16 on a CPU with native bf16
    return ProbeRunConfig(
        train=TrainConfig(**{**dict(steps=steps, batch_size=batch, micro_batch_size=micro, lr=3e-3, warmup_steps=5, log_every=1,
                                    out_dir=str(out), progress=False, precision="fp32"), **train}),
        model=ProbeModelConfig(width=8, dropout=dropout), data=ProbeDataConfig(n_train=400, n_val=20))


def write_cfg(path, cfg):
    d = to_dict(cfg)
    path.write_text(yaml.safe_dump(d))
    return path


def weights(out):
    return checkpoint_weights(latest_checkpoint(out))


def same_bits(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses(out):
    return [(r["step"], r["loss"]) for r in read_metrics(out)]


def launch(cfg_file, *extra, torchrun=0):
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun
           else [sys.executable]) + ["-m", "puma_nb.train", "--config", str(cfg_file), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(pred, proc, timeout=120):
    t = time.time()
    while not pred():
        if proc.poll() is not None: raise AssertionError(f"process ended early:\n{proc.stdout.read()}")
        if time.time() - t > timeout: proc.kill(); raise AssertionError("timed out")
        time.sleep(0.05)


def test_stop_and_resume_is_bitwise_identical(tmp_path):
    train_probe(probe_cfg(tmp_path / "a", steps=24))
    r1 = train_probe(probe_cfg(tmp_path / "b", steps=24, stop_after=11))
    assert (r1.status, r1.step) == ("stopped", 11)
    r2 = train_probe(probe_cfg(tmp_path / "b", steps=24))
    assert (r2.status, r2.step) == ("done", 24)
    assert same_bits(weights(tmp_path / "a"), weights(tmp_path / "b"))
    oa, ob = (checkpoint_weights(latest_checkpoint(tmp_path / x), "optimizer") for x in "ab")
    assert any(k.endswith("exp_avg_sq") for k in oa) and same_bits(oa, ob)  # AdamW's moments, by parameter name
    a, b = (torch.load(latest_checkpoint(tmp_path / x) / "scheduler.pt", weights_only=True) for x in "ab")
    assert repr(a) == repr(b)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_sigterm_saves_and_resume_is_bitwise_identical(tmp_path):
    cfg = write_cfg(tmp_path / "probe.yaml", probe_cfg(tmp_path / "straight", steps=150))
    p = launch(cfg); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    p = launch(cfg, f"train.out_dir={tmp_path / 'killed'}")
    wait_for(lambda: len(read_metrics(tmp_path / "killed")) >= 10, p)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 143 and "stopped at probe step" in out and "Traceback" not in out, out
    stopped_at = json.loads((latest_checkpoint(tmp_path / "killed") / "state.json").read_text())["step"]
    assert 10 <= stopped_at < 150 and f"stopped at probe step {stopped_at};" in out
    p = launch(cfg, f"train.out_dir={tmp_path / 'killed'}"); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0 and "finished at step 150" in out, out
    assert same_bits(weights(tmp_path / "straight"), weights(tmp_path / "killed"))
    assert losses(tmp_path / "straight") == losses(tmp_path / "killed")


def test_sigkill_resumes_from_last_checkpoint_bitwise(tmp_path):
    cfg = write_cfg(tmp_path / "probe.yaml", probe_cfg(tmp_path / "straight", steps=150, ckpt_every=10))
    p = launch(cfg); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    killed = tmp_path / "killed"
    p = launch(cfg, f"train.out_dir={killed}")
    wait_for(lambda: latest_checkpoint(killed) is not None and len(read_metrics(killed)) >= 25, p)
    p.kill(); p.communicate()
    at = json.loads((latest_checkpoint(killed) / "state.json").read_text())["step"]
    assert 10 <= at < 150 and at % 10 == 0
    p = launch(cfg, f"train.out_dir={killed}"); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0 and f"resuming from step {at}" in out, out
    assert same_bits(weights(tmp_path / "straight"), weights(killed))
    assert losses(tmp_path / "straight") == losses(killed)  # rows past the checkpoint were dropped, then redone


def test_torchrun_two_ranks_match_one_process(tmp_path):
    # one process accumulates 2 micro-batches of 8; two ranks take 8 each: the same global batch of 16
    cfg = write_cfg(tmp_path / "probe.yaml", probe_cfg(tmp_path / "one", steps=30, dropout=0.0, micro=8))
    p = launch(cfg); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    p = launch(cfg, f"train.out_dir={tmp_path / 'two'}", torchrun=2); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 30
    worst = max(abs(a - b) / abs(a) for (_, a), (_, b) in zip(one, two))
    assert worst < 1e-5, worst
    state = json.loads((latest_checkpoint(tmp_path / "two") / "state.json").read_text())
    assert state["world_size"] == 2 and (latest_checkpoint(tmp_path / "two") / "rng_rank1.pt").exists()
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6) for k in w1)


def test_accumulation_matches_one_big_batch(tmp_path):
    train_probe(probe_cfg(tmp_path / "a", steps=10, dropout=0.0, micro=0))
    train_probe(probe_cfg(tmp_path / "b", steps=10, dropout=0.0, micro=4))
    worst = max(abs(x - y) / abs(x) for (_, x), (_, y) in zip(losses(tmp_path / "a"), losses(tmp_path / "b")))
    assert worst < 1e-5, worst


def test_half_written_checkpoint_is_ignored(tmp_path):
    train_probe(probe_cfg(tmp_path, steps=6))
    root = tmp_path / "checkpoints"
    shutil.copytree(root / "step_00000006", root / "step_00000009.tmp")  # a save killed before its rename
    (root / "step_00000009.tmp" / "state.json").unlink()
    assert latest_checkpoint(tmp_path).name == "step_00000006"
    (root / "latest").unlink()  # even without the pointer
    assert latest_checkpoint(tmp_path).name == "step_00000006"


def test_resume_refuses_a_different_run(tmp_path):
    train_probe(probe_cfg(tmp_path, steps=4))
    with pytest.raises(ConfigError, match="changed: train.lr"):
        train_probe(probe_cfg(tmp_path, steps=4, **{}).__class__(
            train=TrainConfig(steps=8, batch_size=16, lr=1e-2, warmup_steps=5, log_every=1, out_dir=str(tmp_path), progress=False),
            model=ProbeModelConfig(width=8), data=ProbeDataConfig(n_train=400, n_val=20)))
    with pytest.raises(ConfigError, match="resume is false"):
        train_probe(probe_cfg(tmp_path, steps=4, resume=False))
    r = train_probe(probe_cfg(tmp_path, steps=8))  # more steps is allowed
    assert r.step == 8


def test_bf16_autocast_on_cpu(tmp_path):
    r = train_probe(probe_cfg(tmp_path, steps=3, precision="bf16"))
    assert r.status == "done" and all(torch.isfinite(torch.tensor(l)) for _, l in losses(tmp_path))
    assert r.precision == "bf16" and json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())["precision"] == "bf16"


CPU_KINDS = {  # torch's cpuinfo flags (`torch._C._cpu._get_cpu_capability()`) of four kinds of CPU, as far as bf16 goes
    "an AVX2 laptop": {"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False, "amx_tile": False},
    "AVX-512 without bf16 (Skylake-SP)": {"avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False, "amx_tile": False},
    "AVX512-BF16 (Zen 4/5, Cooper Lake)": {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": False, "amx_tile": False},
    "AMX (Sapphire Rapids)": {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True, "amx_tile": True},
}


@pytest.mark.parametrize("kind, want", [("an AVX2 laptop", "fp32"), ("AVX-512 without bf16 (Skylake-SP)", "fp32"),
                                        ("AVX512-BF16 (Zen 4/5, Cooper Lake)", "bf16"), ("AMX (Sapphire Rapids)", "bf16")])
def test_precision_auto_follows_the_cpu(monkeypatch, kind, want):
    from puma_nb import runtime, training
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: dict(CPU_KINDS[kind]))
    assert runtime.resolve_precision("auto", "cpu") == want
    assert runtime.resolve_precision(TrainConfig(precision="auto"), torch.device("cpu")) == want  # a config, a device
    assert runtime.cpu_bf16() == {"fp32": None, "bf16": "amx_bf16" if "AMX" in kind else "avx512_bf16"}[want]
    for p in ("fp32", "bf16"): assert runtime.resolve_precision(p, "cpu") == p  # an explicit precision is kept, whatever the CPU
    with training._autocast(runtime.resolve_precision("auto", "cpu"), torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") == (want == "bf16")


def test_precision_auto_on_a_gpu_and_without_a_probe(monkeypatch):
    from puma_nb import runtime
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: dict(CPU_KINDS["an AVX2 laptop"]))
    for native, want in ((True, "bf16"), (False, "fp32")):  # a GPU's bf16 counts where it is native (Ampere on), not emulated (V100)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n or including_emulation)
        assert runtime.resolve_precision("auto", "cuda") == want and runtime.resolve_precision("auto", torch.device("cuda", 0)) == want
        assert runtime.resolve_precision("fp32", "cuda") == "fp32" and runtime.resolve_precision("bf16", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # device auto: the GPU when there is one
    assert runtime.resolve_precision("auto") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_precision("auto", "auto") == "fp32"  # the CPU: an AVX2 laptop
    monkeypatch.delattr(torch._C._cpu, "_get_cpu_capability")  # a torch without the probe: fp32, never an emulated bf16
    assert runtime.cpu_bf16() is None and runtime.resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ConfigError, match="precision must be auto, fp32 or bf16"): runtime.resolve_precision("fp16", "cpu")


def test_cli_config_errors_are_clear(tmp_path, capsys):
    assert train_main(["--config", str(ROOT / "configs/probe.yaml"), "train.lrr=1"]) == 2
    assert "unknown key 'lrr' in train" in capsys.readouterr().err
    assert train_main(["--config", str(ROOT / "configs/probe.yaml"), "train.batch_size=ten"]) == 2
    assert "train.batch_size: expected an integer, got 'ten'" in capsys.readouterr().err
    assert train_main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_config_file_loads():
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files
    for f in files:
        cfg, run = resolve(f)
        assert callable(run) and cfg.stage == yaml.safe_load(f.read_text())["stage"]


def test_sigterm_under_torchrun_saves_every_rank_and_resumes_bitwise(tmp_path):
    # SIGTERM to torchrun (as a scheduler sends it) reaches every rank; they agree to stop at the same step
    cfg = write_cfg(tmp_path / "probe.yaml", probe_cfg(tmp_path / "straight", steps=120, micro=8))
    p = launch(cfg, torchrun=2); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    killed = tmp_path / "killed"
    p = launch(cfg, f"train.out_dir={killed}", torchrun=2)
    wait_for(lambda: len(read_metrics(killed)) >= 10, p)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    ckpt = latest_checkpoint(killed)
    assert ckpt is not None, out
    state = json.loads((ckpt / "state.json").read_text())
    assert state["world_size"] == 2 and 10 <= state["step"] < 120, out
    assert f"stopped at probe step {state['step']}; rerun the same command to resume" in out, out  # rank 0's line
    assert {f.name for f in ckpt.iterdir()} >= {"rng_rank0.pt", "rng_rank1.pt", "sharded", "scheduler.pt"}
    p = launch(cfg, f"train.out_dir={killed}", torchrun=2); out, _ = p.communicate(timeout=300)
    assert p.returncode == 0 and f"resuming from step {state['step']}" in out, out
    assert same_bits(weights(tmp_path / "straight"), weights(killed))
    assert losses(tmp_path / "straight") == losses(killed)


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    r1 = train_probe(probe_cfg(tmp_path, steps=5, eval_every=2, log_every=3))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*")}
    r2 = train_probe(probe_cfg(tmp_path, steps=5, eval_every=2, log_every=3))
    assert (r2.status, r2.step) == ("done", 5) and r2.last == r1.last and "val_exact" in r2.last
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*")} == before
    # evaluation rows come at every eval_every step even when log_every does not divide it
    assert [r["step"] for r in read_metrics(tmp_path) if "val_exact" in r] == [2, 4, 5]


def close_runs(a, b, rel=1e-4):
    la, lb = losses(a), losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb], (la, lb)
    worst = max(abs(x - y) / abs(x) for (_, x), (_, y) in zip(la, lb))
    assert worst < rel, worst
    wa, wb = weights(a), weights(b)
    # body.0.bias feeds a GroupNorm with one channel per group, which cancels it: its gradient is rounding
    # noise, which Adam scales up to lr-sized steps of random sign, so it cannot agree between two runs.
    assert wa.keys() == wb.keys()
    bad = [k for k in wa if k != "body.0.bias" and not torch.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-5)]
    assert not bad, bad


def test_fsdp_two_ranks_match_one_process_and_resume_on_one(tmp_path):
    # FSDP2 over 2 gloo ranks, dropout on: randomness keyed by (step, offset) makes it the same run as one
    # process accumulating the same two micro-batches; its sharded checkpoint then resumes in one process.
    kw = dict(steps=16, dropout=0.2, micro=8, fsdp_blocks=["Conv2d", "Linear"], activation_checkpointing=True)
    one = write_cfg(tmp_path / "one.yaml", probe_cfg(tmp_path / "one", **kw))
    p = launch(one); out, _ = p.communicate(timeout=300); assert p.returncode == 0, out
    two = write_cfg(tmp_path / "two.yaml", probe_cfg(tmp_path / "two", parallel="fsdp", **kw))
    p = launch(two, "train.stop_after=8", torchrun=2); out, _ = p.communicate(timeout=300); assert p.returncode == 0, out
    ck = latest_checkpoint(tmp_path / "two")
    assert json.loads((ck / "state.json").read_text())["world_size"] == 2
    assert len(list((ck / "sharded").glob("*.distcp"))) == 2  # each rank wrote its own shard
    p = launch(two); out, _ = p.communicate(timeout=300); assert p.returncode == 0, out  # one process takes over
    assert "resuming from step 8" in out and "written by 2 rank(s)" in out
    close_runs(tmp_path / "one", tmp_path / "two")


def test_ddp_with_dropout_matches_one_process_and_resumes_on_two_ranks(tmp_path):
    # the other direction: one process stops, two DDP ranks finish; dropout draws are the same either way
    kw = dict(steps=12, dropout=0.2, micro=8)
    one = write_cfg(tmp_path / "one.yaml", probe_cfg(tmp_path / "one", **kw))
    p = launch(one); out, _ = p.communicate(timeout=300); assert p.returncode == 0, out
    mixed = write_cfg(tmp_path / "mixed.yaml", probe_cfg(tmp_path / "mixed", **kw))
    p = launch(mixed, "train.stop_after=6"); out, _ = p.communicate(timeout=300); assert p.returncode == 0, out
    p = launch(mixed, torchrun=2); out, _ = p.communicate(timeout=300); assert p.returncode == 0, out
    close_runs(tmp_path / "one", tmp_path / "mixed")


def test_a_meta_model_needs_fsdp_ranks_to_fill_it():
    from puma_nb.training import TrainConfig, place_model
    from puma_nb.runtime import Dist
    with torch.device("meta"): m = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="rank 0 built its model on the meta device"):
        place_model(m, TrainConfig(parallel="fsdp"), Dist())


def test_fsdp_needs_blocks_to_shard(tmp_path):
    cfg = probe_cfg(tmp_path / "x", steps=2, parallel="fsdp", fsdp_blocks=["NoSuchBlock"])
    with pytest.raises(ConfigError, match="is one of fsdp_blocks"):
        train_probe(cfg)


def test_compiled_blocks_train_the_same_model(tmp_path):
    # compile: true hands each fsdp_blocks module's forward to torch.compile (checkpointed inside it here);
    # the run computes the same losses and weights as the eager one, under the same parameter names
    from torch._dynamo.utils import counters
    kw = dict(steps=6, fsdp_blocks=["Conv2d", "Linear"], activation_checkpointing=True)
    eager = train_probe(probe_cfg(tmp_path / "eager", **kw))
    graphs = counters["stats"]["unique_graphs"]
    compiled = train_probe(probe_cfg(tmp_path / "compiled", compile=True, **kw))
    assert counters["stats"]["unique_graphs"] > graphs  # the blocks were compiled
    assert (eager.status, compiled.status) == ("done", "done")
    close_runs(tmp_path / "eager", tmp_path / "compiled")


def test_fsdp_with_compiled_checkpointed_blocks_matches_one_eager_process(tmp_path):
    # torchtitan's order on every block: checkpoint (inside the compiled function), compile, then fully_shard
    kw = dict(steps=8, dropout=0.2, micro=8, fsdp_blocks=["Conv2d", "Linear"], activation_checkpointing=True)
    one = write_cfg(tmp_path / "one.yaml", probe_cfg(tmp_path / "one", **kw))
    p = launch(one); out, _ = p.communicate(timeout=300); assert p.returncode == 0, out
    two = write_cfg(tmp_path / "two.yaml", probe_cfg(tmp_path / "two", parallel="fsdp", compile=True, **kw))
    p = launch(two, torchrun=2); out, _ = p.communicate(timeout=300); assert p.returncode == 0, out
    close_runs(tmp_path / "one", tmp_path / "two")
