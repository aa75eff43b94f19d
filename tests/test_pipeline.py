"The pipeline: loading a run folder, every task's call on untrained stand-ins, grounding's box parsing, clear errors."
import numpy as np
import pytest
import torch

from puma_nb import toyworld as tw
from puma_nb.decoder import DecoderConfig, build_decoder, save_puma_decoder
from puma_nb.instruct import INSTRUCT_TASKS
from puma_nb.mllm import MLLMConfig, build_mllm, save_mllm, tiny_tokenizer
from puma_nb.pipeline import Puma, demo, draw_boxes
from puma_nb.pyramid import SCALES, TinyClipConfig, save_clip, tiny_clip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    folder, tok = tmp_path_factory.mktemp("run"), tiny_tokenizer()
    save_clip(tiny_clip(), TinyClipConfig(), folder / "clip" / "model")
    for i, n in enumerate(SCALES): save_puma_decoder(build_decoder(i, DecoderConfig()), folder / "decoders" / f"unet_{n}")
    cfg = MLLMConfig(hidden_size=64, intermediate_size=128, layers=1, heads=2, kv_heads=2)
    for name in ("pretrain",) + tuple(f"instruct/{t}" for t in INSTRUCT_TASKS):
        save_mllm(build_mllm(cfg, tok), tok, cfg, folder / name / "model")
    return folder


def test_every_task_runs_on_a_run_folder(run):
    puma = Puma.from_run(run, sampling={"steps": 2, "guidance": 1.0, "scheduler": "ddim"})
    pics = puma.text_to_image("a large red circle at the center on a white background", scales=(4, 0), seeds=(0, 1))
    assert set(pics) == {(4, 0), (4, 1), (0, 0), (0, 1)} and all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p in pics.values())
    x = tw.render(tw.split_scene("test", 0))
    assert puma.edit(x, "change the background to black").shape == (64, 64, 3)
    for kind in tw.CONDITION_KINDS:
        c = tw.make_condition(tw.split_scene("test", 0), kind)
        assert puma.conditional(kind, c.image, "a small red circle", with_instruction=kind != "canny").shape == (64, 64, 3)
    assert isinstance(puma.understand(x, "what color is the background?"), str)
    box = puma.ground(x, "the red circle")
    assert box is None or len(box) == 4
    with pytest.raises(ValueError, match="unknown condition"): puma.conditional("depth", x, "a")
    with pytest.raises(ValueError, match="64×64×3 uint8"): puma.understand(x.astype(np.float32), "a")
    ui, go, apply = demo(puma)
    go.click(); apply.click()  # the demo's buttons call the pipeline


def test_grounding_reads_four_position_tokens(run, monkeypatch):
    import puma_nb.pipeline as pl
    puma = Puma.from_run(run)
    monkeypatch.setattr(pl, "generate_text", lambda *a, **k: ["<p10> <p20> <p70> <p80>"])
    assert puma.ground(tw.render(tw.split_scene("test", 0)), "the x") == tw.from_bins([10, 20, 70, 80])
    monkeypatch.setattr(pl, "generate_text", lambda *a, **k: ["red circle"])
    assert puma.ground(tw.render(tw.split_scene("test", 0)), "the x") is None


def test_missing_parts_are_named(run, tmp_path):
    import shutil
    shutil.copytree(run, tmp_path / "r")
    shutil.rmtree(tmp_path / "r" / "decoders" / "unet_16")
    shutil.rmtree(tmp_path / "r" / "instruct" / "edit")
    with pytest.raises(FileNotFoundError, match=r"missing edit \(instruct/edit/model/model.safetensors\), D2 \(decoders/unet_16"):
        Puma.from_run(tmp_path / "r")


def test_boxes_are_drawn_inside_the_picture():
    x = np.zeros((64, 64, 3), np.uint8)
    y = draw_boxes(x, [[10, 12, 30, 40], [-5, -5, 80, 80], None])
    assert (y[12, 10:31] == (255, 0, 255)).all() and (y[12:41, 30] == (255, 0, 255)).all() and y[20, 20].sum() == 0
    assert (y[0, :] == (255, 0, 255)).all() and (y[:, 63] == (255, 0, 255)).all()  # clipped to the border
