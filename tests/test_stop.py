"Stopping is safe and says so: SIGINT and SIGTERM save the step reached, print one line, exit 130 or 143; a resumed job skips what is done."
import json, os, re, signal, subprocess, sys, threading, time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from puma_nb import cli, job, job_data, report
from puma_nb.training import FitResult, TrainConfig, fit, latest_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
CODE = {signal.SIGINT: 130, signal.SIGTERM: 143}
LINE = re.compile(r"^stopped at (.+?)(?: step (\d+))?; rerun the same command to resume$", re.M)
PROBE = ["--config", str(ROOT / "configs" / "probe.yaml"), "train.steps=5000", "train.batch_size=16", "train.log_every=1",
         "train.progress=false", "train.precision=fp32", "model.width=8", "data.n_train=400", "data.n_val=20"]


class Proc:
    "A subprocess whose merged output is read as it comes (to wait for a line), with a hang guard."
    def __init__(self, cmd):
        self.p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.p.stdout.readline, "")), daemon=True)
        self.reader.start()

    @property
    def out(self) -> str: return "".join(self.lines)

    def wait_for(self, pred, timeout=120):
        t = time.time()
        while not pred():
            if self.p.poll() is not None: raise AssertionError(f"ended early ({self.p.returncode}):\n{self.out[-3000:]}")
            if time.time() - t > timeout: self.p.kill(); raise AssertionError(f"timed out:\n{self.out[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig, timeout=120) -> str:
        self.p.send_signal(sig)
        try: self.p.wait(timeout)
        except subprocess.TimeoutExpired: self.p.kill(); raise
        self.reader.join(10)
        return self.out


def the_line(out:str) -> tuple[str, int|None]:
    "The one stop line: (where, step); no traceback beside it."
    found = LINE.findall(out)
    assert len(found) == 1 and "Traceback" not in out, out[-3000:]
    return found[0][0], int(found[0][1]) if found[0][1] else None


def saved_step(folder) -> int:
    return json.loads((latest_checkpoint(folder) / "state.json").read_text())["step"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_training_saves_the_step_reached_and_the_same_command_resumes(tmp_path, sig):
    cmd = [sys.executable, "-m", "puma_nb.train", *PROBE, f"train.out_dir={tmp_path}"]
    p = Proc(cmd)
    p.wait_for(lambda: len(read_metrics(tmp_path)) >= 5)
    out = p.stop(sig)
    assert p.p.returncode == CODE[sig], out
    where, step = the_line(out)
    assert where == "probe" and step >= 5 and saved_step(tmp_path) == step  # the exact step, not the last ckpt_every one
    assert json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())["precision"] == "fp32"
    r = subprocess.run(cmd + ["train.stop_after=2"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"probe: resuming from step {step} " in r.stdout, r.stdout + r.stderr
    assert f"stopped (stop_after); rerun to continue at step {step + 2}" in r.stdout


def test_sigint_under_torchrun_stops_every_rank_at_one_step(tmp_path):
    # torchrun passes the signal to every rank; they agree (all_reduce) on the step, all save it, rank 0 says where.
    # torchrun itself then reports the signal its own way (a SignalException traceback, exit 1): that part is the launcher's.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "puma_nb.train", *PROBE,
           "train.micro_batch_size=8", f"train.out_dir={tmp_path}"]
    p = Proc(cmd)
    p.wait_for(lambda: len(read_metrics(tmp_path)) >= 5)
    out = p.stop(signal.SIGINT)
    found = LINE.findall(out)
    assert len(found) == 1 and found[0][0] == "probe", out[-3000:]
    ckpt = latest_checkpoint(tmp_path)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == int(found[0][1]) and state["world_size"] == 2
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= {f.name for f in ckpt.iterdir()}


JOB = """
import sys
from puma_nb import cli, job
# the smoke job's sizes with the toy's CLIP stage (the file's 1600 steps), to stop it in the middle
job.PRESETS["stop"] = job.Preset("stop", 1000, 100, 100, table1_n=2, sample_steps=2, eval_n=2, qa_n=2,
                                 expected_seconds=job.PRESETS["smoke"].expected_seconds)
sys.exit(cli.main(["stop", "--out", sys.argv[1]]))
"""


def test_the_main_job_stops_in_any_stage_and_resumes_without_redoing_data(tmp_path):
    run = tmp_path / "run"
    start = lambda: Proc([sys.executable, "-c", JOB, str(run)])
    # 1. SIGINT in the data stage, outside any training loop: the same line, no step, exit 130, no data vouched for
    p = start()
    p.wait_for(lambda: "[1/11] data" in p.out)
    out = p.stop(signal.SIGINT)
    assert p.p.returncode == 130 and the_line(out) == ("data", None), out
    assert not (run / "data" / "done.json").exists()
    # 2. SIGTERM in the middle of the CLIP stage: its exact step saved, exit 143
    p = start()
    p.wait_for(lambda: len(read_metrics(run / "clip")) >= 3)
    out = p.stop(signal.SIGTERM)
    assert p.p.returncode == 143, out
    where, step = the_line(out)
    assert where == "clip" and step >= 3 and saved_step(run / "clip") == step
    data = {f: (run / "data" / f).stat().st_mtime_ns for f in (*job_data.DATA_FILES, "done.json")}
    job = json.loads((run / "job.json").read_text())  # each invocation's wall time; the time inside the stopped stages kept
    first = job["partial_seconds"]
    assert [r["seconds"] > 0 for r in job["runs"]] == [True, True] and set(first) == {"clip"}, job  # data's first try counted once it finished
    assert job["stage_seconds"]["data"] > 0
    assert 0 < first["clip"] <= job["runs"][1]["seconds"] and "clip" not in job["stage_seconds"], job
    # 3. the same command: the data stage kept (not rewritten), CLIP resumed at that step, its ETA counting the steps done
    p = start()
    p.wait_for(lambda: f"clip: resuming from step {step} " in p.out)
    out = p.stop(signal.SIGINT)
    assert p.p.returncode == 130 and the_line(out)[0] == "clip", out
    assert {f: (run / "data" / f).stat().st_mtime_ns for f in data} == data
    clip_line = next(l for l in out.splitlines() if l.startswith("[2/11] clip"))
    assert clip_line.endswith(f"· {step / 1600:.0%} of it done before"), clip_line
    job = json.loads((run / "job.json").read_text())  # the third stop adds to the clip stage's kept seconds
    assert len(job["runs"]) == 3 and job["partial_seconds"]["clip"] > first["clip"], job


def test_a_stopped_run_stops_the_main_job_with_one_line(monkeypatch, capsys, tmp_path):
    "A run's `FitResult` or a signal outside any run: `cli.main` prints where, and returns 128 + the signal."
    job.stop_unless_done(None)  # a stage finished before: go on
    job.stop_unless_done(FitResult(10, "done", tmp_path, {}, None))
    def run(preset, out, clock, status="preempted", folder=("decoders", "f2", "plain"), stage="decoders", sig=signal.SIGINT):
        with clock.stage(stage): job.stop_unless_done(FitResult(37, status, out.joinpath(*folder), {}, None, "fp32", sig))
    cases = [({}, 130, "stopped at decoders (f2/plain) step 37"),
             (dict(folder=("instruct", "t2i"), stage="t2i", sig=signal.SIGTERM), 143, "stopped at t2i step 37"),
             (dict(status="done", folder=("clip",), stage="clip"), 130, "stopped at clip step 37")]  # a signal after its last step
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    last_line = lambda out: (out.count("stopped at") == 1 or out) and out.splitlines()[-1]  # the stage lines (ETA) come before it
    for kw, code, line in cases:
        monkeypatch.setattr(job, "_main_job", lambda preset, out, clock, command, lanes, kw=kw: run(preset, out, clock, **kw))
        assert cli.main(["smoke", "--out", str(tmp_path)]) == code
        assert last_line(capsys.readouterr().out) == line + "; rerun the same command to resume"
    def data_stage(preset, out, clock, command, lanes):  # a real signal in a stage that trains nothing: the handler raises at once
        with clock.stage("data"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            raise AssertionError("not stopped")
    monkeypatch.setattr(job, "_main_job", data_stage)
    assert cli.main(["smoke", "--out", str(tmp_path)]) == 143
    assert last_line(capsys.readouterr().out) == "stopped at data; rerun the same command to resume"
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # the job's handlers are gone with it


def test_a_signal_inside_fit_in_a_job_and_alone(monkeypatch, capsys, tmp_path):
    "In-process: a SIGINT during step 3 is saved as step 3 (not a KeyboardInterrupt), under the main job and in a bare `fit` (a notebook)."
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    calls = []
    def loss(model, b):
        calls.append(1)
        if len(calls) == 3: os.kill(os.getpid(), signal.SIGINT)
        return ((model(b[0]) - b[1]) ** 2).mean()
    cfg = lambda out: TrainConfig(steps=50, batch_size=8, lr=1e-2, progress=False, precision="fp32", out_dir=str(out))
    before = signal.getsignal(signal.SIGINT)
    r = fit(nn.Linear(4, 1), loss, data, cfg(tmp_path / "alone"))
    assert (r.status, r.step, r.signal) == ("preempted", 3, signal.SIGINT) and saved_step(tmp_path / "alone") == 3
    assert signal.getsignal(signal.SIGINT) is before  # `fit` handled it only while it ran
    calls.clear()
    def in_clip(preset, out, clock, command, lanes):
        with clock.stage("clip"): job.stop_unless_done(fit(nn.Linear(4, 1), loss, data, cfg(out / "clip")))
    monkeypatch.setattr(job, "_main_job", in_clip)
    assert cli.main(["smoke", "--out", str(tmp_path / "job")]) == 130
    assert capsys.readouterr().out.endswith("stopped at clip step 3; rerun the same command to resume\n")
    assert saved_step(tmp_path / "job" / "clip") == 3


def fake_checkpoint(folder:Path, step:int):
    d = folder / "checkpoints" / f"step_{step:08d}"
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({"step": step}))


DECODER_STEPS = 2000 + 1500 + 4000 + 6000 + 3000  # configs/toy/decoder_f*.yaml


def test_the_eta_after_a_resume_counts_the_steps_done(tmp_path):
    p, e, S = job.PRESETS["toy"], job.PRESETS["toy"].expected_seconds, job.STAGES
    fake_checkpoint(tmp_path / "clip", 1040)  # CLIP stopped at 1040 of 1600 steps: 65% done
    fake_checkpoint(tmp_path / "decoders" / "f0" / "plain", 1500)  # D_0 (2000 steps): 1500 before its reader loss, 100 with it
    fake_checkpoint(tmp_path / "decoders" / "f0", 100)
    fake_checkpoint(tmp_path / "instruct" / "understanding_first", 1500)  # the f2-only phase done, the main one not begun
    progress = job.stage_progress(p, tmp_path)
    assert progress("clip") == 1040 / 1600 and progress("decoders") == 1600 / DECODER_STEPS
    assert progress("understanding") == 1500 / 1800 and progress("pretrain") == progress("data") == progress("table1") == 0
    now, lines = [0.0], []
    clock = job.JobClock(e, clock=lambda: now[0], out=lines.append, progress=progress)
    hms = lambda s: job._hms(s)
    rest = (1 - 1040 / 1600) * e["clip"]
    with clock.stage("clip"): now[0] += 2 * rest  # the rest of CLIP, at half the reference speed
    assert lines[0] == f"[2/11] clip · 0:00:00 so far · about {hms(rest + sum(e[s] for s in S[2:]))} left · 65% of it done before"
    assert clock.speed() == pytest.approx(2.0)  # measured against the 35% it had left, not the whole stage
    with clock.stage("decoders"): now[0] += 1
    left = 2.0 * ((1 - 1600 / DECODER_STEPS) * e["decoders"] + sum(e[s] for s in S[3:]))
    assert lines[1].startswith(f"[3/11] decoders · {hms(now[0] - 1)} so far · about {hms(left)} left · ")
    # a stage found finished has nothing left: out of the estimate and out of the speed
    fake_checkpoint(tmp_path / "pretrain", 600)
    before = len(lines)
    with clock.stage("pretrain"): now[0] += 0.5
    assert clock.done["pretrain"] == 1.0 and lines[before].endswith(f"about {hms(clock.left('t2i'))} left")


def test_the_data_stage_is_kept_when_complete_and_rebuilt_when_not(tmp_path, monkeypatch):
    p = job.Preset("d", 40, 10, 10)
    stats = job_data.build_data(p, tmp_path)
    files = [tmp_path / "data" / f for f in (*job_data.DATA_FILES, "done.json")]
    mtimes = [f.stat().st_mtime_ns for f in files]
    def boom(*a, **kw): raise AssertionError("the data were built again")
    with monkeypatch.context() as m:
        m.setattr(job_data.tw, "ShapesWorld", boom)
        assert job_data.build_data(p, tmp_path) == stats and [f.stat().st_mtime_ns for f in files] == mtimes
        assert job.stage_progress(p, tmp_path)("data") == 1.0
    assert job_data.built_data(replace(p, seed=1), tmp_path) is None  # another preset's data
    with open(tmp_path / "data" / "test.jsonl", "a") as f: f.write("{}\n")  # a file changed since its build
    assert job_data.built_data(p, tmp_path) is None and job.stage_progress(p, tmp_path)("data") == 0.0
    assert job_data.build_data(p, tmp_path) == stats and job_data.built_data(p, tmp_path) == stats  # built again, and vouched for
    (tmp_path / "data" / "done.json").unlink()  # a build stopped before its last write
    assert job_data.built_data(p, tmp_path) is None


def test_the_report_names_the_machine_and_the_precision(monkeypatch):
    from puma_nb import training
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: {"avx2": True, "avx512_bf16": False, "amx_bf16": False})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    prec = job.job_precision(job.PRESETS["toy"])
    assert prec["auto"] == "fp32" and prec["cpu_bf16"] is None and prec["stages"]["clip"] == "fp32"
    assert set(prec["stages"]) == set(job.STAGES) - {"data", "table1", "evaluation"}
    words = report.precision_words(prec)
    assert "`precision: auto` gives fp32 here: this CPU has no native bf16" in words
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: {"avx512_bf16": True, "amx_bf16": False})
    prec = job.job_precision(job.PRESETS["toy"])
    # the CLIP and the decoders stay in fp32, as their recipes pin (measured so); pretraining and instruct follow `auto`
    assert {s: v for s, v in prec["stages"].items() if v == "fp32"} == {"clip": "fp32", "decoders": "fp32"}
    assert set(prec["stages"].values()) == {"bf16", "fp32"} and report.precision_words(prec).startswith("trained in fp32 for clip, decoders; bf16 for ")
    assert "gives bf16 here: this CPU has avx512_bf16)" in report.precision_words(prec) and training.resolve_precision("auto", "cpu") == "bf16"
    assert re.fullmatch(r".+, \d+ cores", job.machine())


LANES_JOB = """
import sys
from puma_nb import cli, job
# every run cut to 40 steps: after the CLIP, the decoders and the pretraining train at once, in two lanes of one thread
job.PRESETS["lanes"] = job.Preset("lanes", 200, 20, 20, table1_n=2, sample_steps=2, eval_n=2, qa_n=2, max_steps=40)
sys.exit(cli.main(["lanes", "--out", sys.argv[1], "--lanes", "2"]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_two_lanes_stop_together_with_one_line_and_resume(tmp_path, sig):
    """A signal to a job running two lanes reaches both: each saves the step it reached, the job prints one line naming
    both, no traceback, and exits 130 or 143; the same command resumes each at its step, without redoing the data."""
    run = tmp_path / "run"
    start = lambda: Proc([sys.executable, "-c", LANES_JOB, str(run)])
    p = start()
    p.wait_for(lambda: len(read_metrics(run / "pretrain")) >= 1 and (run / "decoders").exists(), timeout=300)
    out = p.stop(sig)
    assert p.p.returncode == CODE[sig], out[-3000:]
    where, step = the_line(out)
    assert step is not None
    stops = dict(re.fullmatch(r"(.+) step (\d+)", w).groups() for w in f"{where} step {step}".split(", "))
    assert "pretrain" in stops and any(k.startswith("decoders (") for k in stops), stops  # both lanes, each named with its run
    for k, n in stops.items():
        folder = run / "pretrain" if k == "pretrain" else run / "decoders" / k[len("decoders ("):-1]
        assert saved_step(folder) == int(n), (k, n)
    data = (run / "stages" / "data.json").stat().st_mtime_ns  # the data stage finished: not run again
    job = json.loads((run / "job.json").read_text())  # the time of the stages it stopped inside is kept, with its wall time
    first = job["partial_seconds"]
    assert set(first) == {"pretrain", "decoders"} and all(0 < v <= job["runs"][0]["seconds"] for v in first.values()), job
    p = start()
    p.wait_for(lambda: all(f"resuming from step {n} " in p.out for n in stops.values()), timeout=300)
    p.stop(signal.SIGTERM)
    assert (run / "stages" / "data.json").stat().st_mtime_ns == data and "[1/11] data" not in p.out
    job = json.loads((run / "job.json").read_text())  # two invocations, each with its wall time; the stopped stages' time adds up
    assert len(job["runs"]) == 2 and all(r["seconds"] > 0 for r in job["runs"])
    assert all(job["partial_seconds"][s] > first[s] for s in first) and "pretrain" not in job["stage_seconds"], job
