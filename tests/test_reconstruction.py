"Table 1 on ShapesWorld: metrics, the LPIPS stand-in, the parser's survival rates, five decoders trained, exported and read back."
import json

import numpy as np
import pytest
import torch

from puma_nb.decoder import load_decoders, steps_per_scale
from puma_nb.decoder_stage import DecoderDataConfig, DecoderRunConfig, DiffusionConfig
from puma_nb.pyramid import SCALES, TinyClipConfig, load_clip, save_clip, tiny_clip, tiny_encoder
from puma_nb.reconstruction import (ATTRIBUTES, chance_rates, figure3, lpips_distance, lpips_metric, psnr, survival_rates, table1,
                                    table1_markdown, train_decoders)
from puma_nb.toyworld import Obj, Scene, ShapesWorld, render, to_tensor
from puma_nb.training import TrainConfig


def test_psnr_values():
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone(); y[0] += 0.1; y[1] += 0.01
    assert torch.allclose(psnr(x, y), torch.tensor([20.0, 40.0]), atol=1e-3)


def test_lpips_stand_in_is_named_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no AlexNet weights here
    m1, name = lpips_metric(seed=0)
    m2, _ = lpips_metric(seed=0)
    assert name.startswith("stand-in") and "alexnet-owt-7be5be79.pth" in name and "randomly initialised" in name
    x, y = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    a, b = lpips_distance(m1, x, y), lpips_distance(m2, x, y)
    assert torch.equal(a, b) and (a > 0).all()
    assert lpips_distance(m1, x, x).abs().max() < 1e-6


def test_survival_rates_exact_and_chance():
    scenes = [ShapesWorld("test", 60).scene(i) for i in range(60)]
    exact = torch.stack([to_tensor(render(s)) for s in scenes])
    assert survival_rates(scenes, exact) == {k: 1.0 for k in ATTRIBUTES}
    chance = chance_rates(scenes)
    assert all(0 <= v < 0.7 for v in chance.values())
    # recolour every object: colours and the whole scene lost, shapes/positions keyed by colour lost too
    swapped = [Scene(s.background, tuple(Obj(o.shape, "red" if o.color != "red" else "blue", o.size, o.position) for o in s.objects[:1]))
               for s in scenes]
    r = survival_rates(scenes, torch.stack([to_tensor(render(s)) for s in swapped]))
    assert r["background"] == 1.0 and r["color"] == 0.0 and r["scene"] == 0.0
    noise = torch.rand(5, 3, 64, 64)
    assert survival_rates(scenes[:5], noise)["scene"] == 0.0


def test_five_decoders_trained_exported_resumed_and_scored(tmp_path):
    save_clip(tiny_clip(), TinyClipConfig(), tmp_path / "clip")
    base = DecoderRunConfig(train=TrainConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=1, progress=False),
                            diffusion=DiffusionConfig(prediction_type="sample", beta_schedule="linear", beta_end=0.02, clip_sample=True),
                            data=DecoderDataConfig(encoder=str(tmp_path / "clip"), n_train=32))
    res = train_decoders(base, 10, tmp_path / "dec", progress=False)
    assert [r.step for r in res.values()] == steps_per_scale(10) == [3, 3, 2, 1, 1]  # 40:30:20:15:10 of 10 steps
    assert {p.name for p in (tmp_path / "dec").iterdir()} >= {f"unet_{n}" for n in SCALES}
    assert all(r is None for r in train_decoders(base, 10, tmp_path / "dec", progress=False).values())  # exported: skipped
    decs = load_decoders(tmp_path / "dec")
    assert [d.n_tokens for d in decs] == list(SCALES) and decs[0].scheduler_config["prediction_type"] == "sample"
    clip, ccfg = load_clip(tmp_path / "clip")
    enc = tiny_encoder(clip, ccfg)
    ds = ShapesWorld("test", 4)
    scenes = [ds.scene(i) for i in range(4)]
    x = torch.stack([to_tensor(render(s)) for s in scenes])
    rows, decoded = table1(decs, enc, x, scenes, steps=2, guidance=2.0, lpips_model=lpips_metric()[0], progress=False)
    assert list(rows) == ["f0", "f1", "f2", "f3", "f4"]
    for r in rows.values():
        assert set(r) == {"psnr_r", "lpips_r", "psnr_d", "lpips_d", *ATTRIBUTES}
        assert 0 < r["psnr_r"] < 60 and r["lpips_d"] >= 0 and all(0 <= r[a] <= 1 for a in ATTRIBUTES)
    assert decoded[0].shape == (4, 2, 3, 64, 64)
    assert "| f4 |" in table1_markdown(rows, chance_rates(scenes))
    figure3(x, decoded, n=2)


def test_decoders_with_their_own_step_counts(tmp_path):
    save_clip(tiny_clip(), TinyClipConfig(), tmp_path / "clip")
    base = DecoderRunConfig(train=TrainConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=1, progress=False),
                            data=DecoderDataConfig(encoder=str(tmp_path / "clip"), n_train=32))
    res = train_decoders(base, (2, 1, 1, 1, 3), tmp_path / "dec", progress=False)  # the toy preset's shape: D_4 gets more than D_3
    assert [r.step for r in res.values()] == [2, 1, 1, 1, 3]
    assert json.loads((tmp_path / "dec" / "f4" / "config.json").read_text())["train"]["steps"] == 3
    for bad in [(1, 1, 1, 1), (1, 1, 0, 1, 1)]:
        with pytest.raises(ValueError, match="five counts"): train_decoders(base, bad, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_load_decoders_names_the_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="unet_1"):
        load_decoders(tmp_path)


def test_reader_loss_on_the_last_steps_only_and_the_chain_starts_before_them(tmp_path):
    "D0 with `reader_steps`: A.1's loss alone first (exported to f0/plain), then the reader loss; D1 starts from the plain D0."
    from puma_nb.decoder import DecoderConfig, load_puma_decoder
    from puma_nb.checkpoints import read_metrics
    save_clip(tiny_clip(), TinyClipConfig(), tmp_path / "clip")
    base = DecoderRunConfig(train=TrainConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=1, progress=False, log_every=1),
                            model=DecoderConfig(spatial_hidden=32, spatial_skip=True), reader_steps=2,
                            diffusion=DiffusionConfig(prediction_type="sample", beta_schedule="linear", beta_end=0.02,
                                                      clip_sample=True, reader_weight=1.0, reader_scales=(0,)),
                            data=DecoderDataConfig(encoder=str(tmp_path / "clip"), n_train=32))
    out = tmp_path / "dec"
    res = train_decoders(base, 23, out, progress=False)  # D0 gets 8 steps: 6 plain, then 2 with the reader loss
    assert steps_per_scale(23)[0] == 8 and res[0].step == 2
    assert [r["step"] for r in read_metrics(out / "f0" / "plain")] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in read_metrics(out / "f0")] == [1, 2]
    assert read_metrics(out / "f0")[0]["lr"] == pytest.approx(1e-3 * 2 / 8)  # where a linear decay over all 8 steps would be
    plain, final = load_puma_decoder(out / "f0" / "plain" / "unet_256"), load_puma_decoder(out / "unet_256")
    assert not torch.equal(plain.spatial_out.weight, final.spatial_out.weight)  # the reader loss moved the skip
    assert (out / "f1" / "plain").exists() is False  # D1..D4 have no reader loss: one run each
    # D1 started from the plain D0: its run config names that folder
    import json
    assert json.loads((out / "f1" / "config.json").read_text())["init"] == str(out / "f0" / "plain" / "unet_256")
    with pytest.raises(Exception, match="reader_steps"):
        from dataclasses import replace
        replace(base, reader_steps=5, train=replace(base.train, steps=5)).validate()


def _puma_release(root):
    """PUMA's checkpoint folders in small, random weights of the same classes: ckpts/clip-vit-large-patch14 (transformers) and
    ckpts/stable-diffusion-xl-base-1.0/{unet_256, unet_16, vae, scheduler} (diffusers)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from _helpers import puma_clip_folder, puma_decoder_folder, small_quick_gelu_clip
    from puma_nb.decoder import SDXL_SCHEDULER
    clip = puma_clip_folder(small_quick_gelu_clip().visual, root / "clip-vit-large-patch14")
    sdxl = root / "stable-diffusion-xl-base-1.0"
    puma_decoder_folder(sdxl / "unet_256"); puma_decoder_folder(sdxl / "unet_16", num_tokens=16)
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  latent_channels=4, norm_num_groups=16).save_pretrained(sdxl / "vae")
    DDPMScheduler(**{k: v for k, v in SDXL_SCHEDULER.items() if k != "set_alpha_to_one"}).save_pretrained(sdxl / "scheduler")
    return clip, sdxl


def test_reconstruct_runs_pumas_inference_on_its_folder_layout(tmp_path):
    from PIL import Image
    from puma_nb.reconstruction import reconstruct_main
    clip, sdxl = _puma_release(tmp_path / "ckpts")
    Image.fromarray((np.random.default_rng(0).random((300, 200, 3)) * 255).astype(np.uint8)).save(tmp_path / "cat.jpg")
    args = [str(tmp_path / "cat.jpg"), "--clip", str(clip), "--mapping-dim", "64", "--mapping-dim1", "32", "--steps", "2", "--size", "48"]
    for scale, n in ((0, 256), (2, 16)):
        out = tmp_path / f"cat_rec_{n}.png"
        assert reconstruct_main(args + ["--scale", str(scale), "--decoder", str(sdxl / f"unet_{n}"), "--out", str(out)]) == 0
        assert Image.open(out).size == (48, 48)  # the size asked, drawn through the sibling vae/ (factor 2 here)
    again = tmp_path / "again.png"
    reconstruct_main(args + ["--scale", "0", "--decoder", str(sdxl / "unet_256"), "--out", str(again)])
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(tmp_path / "cat_rec_256.png")))  # seeded
    with pytest.raises(ValueError, match="--scale 1 reads 64 tokens but .*unet_256 holds a decoder of 256"):
        reconstruct_main(args + ["--scale", "1", "--decoder", str(sdxl / "unet_256")])


def test_reconstruct_file_decodes_f_i_of_pumas_preprocessing_against_a_black_null(tmp_path, monkeypatch):
    "What reaches the decoder: f_i of the picture as puma_image reads it, and f_i of an all-black picture as the null condition."
    from PIL import Image
    from puma_nb import reconstruction as R
    from puma_nb.pyramid import CLIPEncoder, puma_image, pyramid
    from _helpers import small_quick_gelu_clip
    enc = CLIPEncoder(small_quick_gelu_clip().visual, 224)
    im = Image.fromarray((np.random.default_rng(1).random((90, 160, 3)) * 255).astype(np.uint8))
    seen = {}
    def fake_sample(D, f, f_null, shape, steps, guidance, scheduler, generator=None, **kw):
        seen.update(f=f, f_null=f_null, shape=shape, steps=steps, guidance=guidance, scheduler=scheduler)
        return torch.zeros(1, *shape)
    monkeypatch.setattr(R, "sample", fake_sample)
    pic = R.reconstruct_file(im, 3, enc, torch.nn.Linear(1, 1), R.PatchSpace(4), size=32)
    assert pic.size == (32, 32) and seen["shape"] == (48, 8, 8) and (seen["steps"], seen["guidance"], seen["scheduler"]) == (50, 2.0, "ddpm")
    torch.testing.assert_close(seen["f"], pyramid(enc(puma_image(im)[None]))[3])
    torch.testing.assert_close(seen["f_null"], pyramid(enc(torch.zeros(1, 3, 224, 224)))[3])


def test_puma_nb_reconstruct_console_script(tmp_path):
    "`puma-nb reconstruct …` from the shell, on PUMA's folder layout with tiny random weights: a picture of the size asked."
    import subprocess, sys
    from pathlib import Path
    from PIL import Image
    from _helpers import ENV
    clip, sdxl = _puma_release(tmp_path / "ckpts")
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "cat.png")
    exe = Path(sys.executable).parent / "puma-nb"
    r = subprocess.run([str(exe), "reconstruct", str(tmp_path / "cat.png"), "--scale", "2", "--clip", str(clip), "--decoder",
                        str(sdxl / "unet_16"), "--mapping-dim", "64", "--mapping-dim1", "32", "--steps", "2", "--size", "40"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert Image.open(tmp_path / "cat_rec_16.png").size == (40, 40) and "cat_rec_16.png (40×40, f2" in r.stdout
