"PUMA's decoders: conditioning path, A.1's loss, classifier-free guidance, PUMA's checkpoint layout, SDXL shape on meta."
import json

import pytest
import torch
from safetensors.torch import load_file

from puma_nb.decoder import (SCHEDULERS, DecoderConfig, PatchSpace, build_decoder, decoder_loss, load_puma_decoder,
                             make_scheduler, sample, save_puma_decoder, steps_per_scale)
from puma_nb.pyramid import SCALES


def test_sdxl_shaped_decoder_on_meta():
    with torch.device("meta"):
        d = build_decoder(0, DecoderConfig(kind="sdxl", feature_dim=1024, cross_attention_dim=2048))
        eps = d(torch.randn(2, 4, 64, 64), torch.tensor([1, 999]), torch.randn(2, 256, 1024), pos_weight=torch.tensor([1.0, 0.0]))
    assert eps.shape == (2, 4, 64, 64)
    assert d.mapping_layer.in_features == 1024 and d.embed_img_pos.shape == (1, 256, 2048)
    assert d.unet.config.addition_embed_type is None  # no SDXL added conditions
    assert sum(p.numel() for p in d.unet.parameters()) > 2.5e9


def test_positional_embedding_only_for_f0_and_off_on_the_null_branch():
    for i, n in enumerate(SCALES):
        assert (build_decoder(i).embed_img_pos is not None) == (i == 0)
    d = build_decoder(0)
    f = torch.randn(3, 256, 64)
    h = d.condition(f, pos_weight=torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(h[1], d.mapping_layer(f[1]))
    assert torch.allclose(h[0], d.mapping_layer(f[0]) + d.embed_img_pos[0])


def test_loss_with_all_null_conditions_ignores_the_features():
    torch.manual_seed(0)
    d, sch = build_decoder(2), make_scheduler()
    z0, f_null = torch.randn(4, 48, 16, 16), torch.randn(1, 16, 64)
    a = decoder_loss(d, z0, torch.randn(4, 16, 64), f_null, sch, p_null=1.0, generator=torch.Generator().manual_seed(3))
    b = decoder_loss(d, z0, torch.randn(4, 16, 64), f_null, sch, p_null=1.0, generator=torch.Generator().manual_seed(3))
    c = decoder_loss(d, z0, torch.randn(4, 16, 64), f_null, sch, p_null=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_zero_is_the_null_branch_and_every_scheduler_samples():
    d, sp = build_decoder(3).eval(), PatchSpace()
    f_null = torch.randn(1, 4, 64)
    g = lambda: torch.Generator().manual_seed(0)
    a = sample(d, torch.randn(2, 4, 64), f_null, sp.latent_shape(64), steps=3, guidance=0.0, generator=g())
    b = sample(d, torch.randn(2, 4, 64), f_null, sp.latent_shape(64), steps=3, guidance=0.0, generator=g())
    assert torch.allclose(a, b, atol=1e-5)
    for name in SCHEDULERS:
        assert torch.isfinite(sample(d, torch.randn(1, 4, 64), f_null, (48, 16, 16), steps=3, scheduler=name, generator=g())).all()
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("plms")


@pytest.mark.parametrize("scale", range(5))
def test_puma_layout_round_trip(tmp_path, scale):
    d0 = build_decoder(scale)
    folder = tmp_path / f"unet_{SCALES[scale]}"
    save_puma_decoder(d0, folder)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["num_tokens"] == SCALES[scale] and cfg["use_embeds"] == (scale == 0) and cfg["mapping_dim"] == 64
    keys = set(load_file(folder / "diffusion_pytorch_model.safetensors"))
    assert {"mapping_layer.weight", "mapping_layer.bias"} <= keys and ("embed_img_pos" in keys) == (scale == 0)
    d1 = load_puma_decoder(folder)
    z, t, f = torch.randn(2, 48, 16, 16), torch.tensor([5, 700]), torch.randn(2, SCALES[scale], 64)
    assert torch.equal(d0(z, t, f), d1(z, t, f))


def _same_output(unet, dec, n):
    z, t, f = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, n, unet.config.mapping_dim)
    with torch.no_grad():
        torch.testing.assert_close(dec(z, t, f), unet(z, t, encoder_hidden_states=unet.condition(f)).sample, atol=1e-5, rtol=1e-5)


def test_loads_a_sharded_folder_as_pumas_models_py_writes_it(tmp_path):
    from _helpers import puma_decoder_folder
    folder = tmp_path / "unet_256"
    unet = puma_decoder_folder(folder)  # sharded safetensors, no mapping arguments in config.json
    files = sorted(p.name for p in folder.iterdir())
    assert "diffusion_pytorch_model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    assert not {"mapping_dim", "num_tokens", "use_embeds"} & set(json.loads((folder / "config.json").read_text()))
    d = load_puma_decoder(folder, mapping_dim=64, mapping_dim1=32)  # num_tokens = 256 from the name, so use_embeds
    assert d.n_tokens == 256 and d.embed_img_pos is not None and d.unet.config.addition_embed_type is None
    _same_output(unet, d, 256)
    with pytest.raises(ValueError, match="mapping_dim1 2048 does not match the UNet's cross_attention_dim 32"):
        load_puma_decoder(folder)  # PUMA's defaults, 1024 → 2048, do not fit this small UNet


@pytest.mark.parametrize("layout", ["bin", "fp16", "config_keys"])
def test_loads_every_layout_diffusers_writes(tmp_path, layout):
    from _helpers import puma_decoder_folder
    folder = tmp_path / "unet_16"
    save = {"bin": dict(safe_serialization=False), "fp16": dict(variant="fp16"), "config_keys": {}}[layout]
    unet = puma_decoder_folder(folder, num_tokens=16, keep_mapping_keys=layout == "config_keys", **save)
    if layout == "fp16":
        with pytest.raises(FileNotFoundError, match="pass variant='fp16'"):
            load_puma_decoder(folder, mapping_dim=64, mapping_dim1=32)
    kw = {} if layout == "config_keys" else dict(mapping_dim=64, mapping_dim1=32)  # PUMA's models.py registers them in config
    d = load_puma_decoder(folder, variant="fp16" if layout == "fp16" else None, **kw)
    assert d.embed_img_pos is None and d.n_tokens == 16
    _same_output(unet, d, 16)


def test_missing_and_unexpected_weights_are_named(tmp_path):
    from _helpers import puma_decoder_folder
    from safetensors.torch import save_file
    folder = tmp_path / "unet_64"
    unet = puma_decoder_folder(folder, num_tokens=64, max_shard_size="10GB")  # one file
    sd = load_file(folder / "diffusion_pytorch_model.safetensors")
    sd.pop("mapping_layer.bias"); sd["add_embedding.linear_1.weight"] = torch.zeros(2, 2)
    save_file(sd, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['mapping_layer.bias'\], unexpected \['unet.add_embedding.linear_1.weight'\]"):
        load_puma_decoder(folder, mapping_dim=64, mapping_dim1=32)
    with pytest.raises(ValueError, match="unexpected \\['embed_img_pos'\\]"):
        puma_decoder_folder(tmp_path / "unet_256", max_shard_size="10GB")
        load_puma_decoder(tmp_path / "unet_256", mapping_dim=64, mapping_dim1=32, use_embeds=False)
    with pytest.raises(FileNotFoundError, match="unet_1, unet_4"):
        load_puma_decoder(tmp_path)


def test_no_mapping_layer_when_the_widths_agree(tmp_path):
    from _helpers import puma_decoder_folder
    unet = puma_decoder_folder(tmp_path / "unet_4", num_tokens=4, mapping_dim=32, mapping_dim1=32)
    d = load_puma_decoder(tmp_path / "unet_4", mapping_dim=32, mapping_dim1=32)
    _same_output(unet, d, 4)


def test_steps_follow_the_papers_ratio():
    assert steps_per_scale(115) == [40, 30, 20, 15, 10]
    s = steps_per_scale(1000)
    assert sum(s) == 1000 and s == sorted(s, reverse=True)


def test_v_prediction_target_and_exact_sampling_with_an_oracle():
    # the loss regresses the scheduler's own target: the noise, the velocity or the clean sample
    d = build_decoder(4)
    z0, f = torch.randn(2, 48, 16, 16), torch.randn(2, 1, 64)
    for pt in ("epsilon", "v_prediction", "sample"):
        sch = make_scheduler(prediction_type=pt)
        g = torch.Generator().manual_seed(0)
        loss = decoder_loss(d, z0, f, torch.zeros(1, 1, 64), sch, p_null=0.0, noise_offset=0.0, generator=g)
        g = torch.Generator().manual_seed(0)
        torch.rand(2, generator=g)  # the null-dropout draw
        noise = torch.randn(z0.shape, generator=g); torch.randn((2, 48, 1, 1), generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        target = {"epsilon": noise, "sample": z0}.get(pt) if pt != "v_prediction" else sch.get_velocity(z0, noise, t)
        assert torch.allclose(loss, torch.nn.functional.mse_loss(d(sch.add_noise(z0, noise, t), t, f), target), atol=1e-6)

    # a model that knows the answer is sampled back exactly by DDPM: the sampling loop itself adds no error
    x0 = torch.randn(3, 48, 16, 16)
    ab = make_scheduler().alphas_cumprod

    class Oracle(torch.nn.Module):
        n_tokens = 1
        def forward(self, z_t, t, f, pos_weight=None):
            a = ab[t.long()].view(-1, 1, 1, 1)
            return (z_t - a.sqrt() * torch.cat([x0, x0])) / (1 - a).sqrt()

    z = sample(Oracle(), torch.zeros(3, 1, 1), torch.zeros(1, 1, 1), (48, 16, 16), steps=25, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, x0, atol=1e-4)


def test_decoder_stage_from_its_config_file(tmp_path):
    from pathlib import Path
    from puma_nb.pyramid import TinyClipConfig, save_clip, tiny_clip
    from puma_nb.train import main as train_main
    root = Path(__file__).resolve().parents[1]
    save_clip(tiny_clip(), TinyClipConfig(), tmp_path / "clip")
    args = ["--config", str(root / "configs/toy/decoder_f0.yaml"), "scale=1", "export_dir=", "train.steps=3", "train.warmup_steps=1",
            "train.batch_size=4", f"train.out_dir={tmp_path / 'd1'}", "train.progress=false", f"data.encoder={tmp_path / 'clip'}"]
    assert train_main(args) == 0
    d = load_puma_decoder(tmp_path / "d1" / "unet_64")
    assert d.n_tokens == 64 and d.embed_img_pos is None
    with pytest.raises(FileNotFoundError, match="no tiny CLIP"):
        train_main(args[:-1] + ["data.encoder=/nonexistent/clip"])


def test_spatial_map_lays_each_token_on_the_cells_it_covers():
    d = build_decoder(1)  # f1: 64 tokens, an 8x8 grid, each over 2x2 latent cells
    f = torch.randn(2, 64, 64)
    m = d.spatial_map(f, (16, 16))
    assert m.shape == (2, d.spatial_dim, 16, 16)
    g = d.spatial(f)  # (2, 64, k)
    for r, c in [(0, 0), (3, 14), (15, 15), (9, 2)]:
        assert torch.equal(m[:, :, r, c], g[:, (r // 2) * 8 + c // 2])
    assert build_decoder(4).spatial_map(torch.randn(1, 1, 64), (16, 16)).std(dim=(2, 3)).max() == 0  # f4: one token everywhere
    assert d.unet.config.in_channels == 48 + d.spatial_dim


def test_spatial_reader_is_a_per_token_mlp_and_both_readers_round_trip(tmp_path):
    d = build_decoder(0)  # the tiny default: Linear(C, 256), SiLU, Linear(256, 64), the same for every token
    assert isinstance(d.spatial, torch.nn.Sequential) and d.spatial_hidden == DecoderConfig().spatial_hidden == 256
    f = torch.randn(1, 256, 64)
    f2 = f.clone(); f2[0, 37] += 1  # change one token: only its own cell of the map moves (no mixing across tokens)
    diff = (d.spatial_map(f, (16, 16)) - d.spatial_map(f2, (16, 16))).abs().sum(1)[0]
    assert diff[37 // 16, 37 % 16] > 0 and (diff > 0).sum() == 1
    for hidden, skip in ((256, True), (0, False)):  # 0, False: the decoders trained before the MLP and its skip
        d = build_decoder(2, DecoderConfig(spatial_hidden=hidden, spatial_skip=skip)).eval()
        if skip: torch.nn.init.normal_(d.spatial_out.weight)  # zero at init: give it weights to round-trip
        save_puma_decoder(d, tmp_path / f"h{hidden}" / "unet_16")
        d1 = load_puma_decoder(tmp_path / f"h{hidden}" / "unet_16")
        assert d1.spatial_hidden == hidden and isinstance(d1.spatial, torch.nn.Linear) == (hidden == 0)
        assert (d1.spatial_out is not None) == skip
        assert d.state_dict().keys() == d1.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(d.state_dict().values(), d1.state_dict().values()))


def test_spatial_skip_adds_the_readers_guess_to_the_unet_output():
    d = build_decoder(0).eval()
    assert torch.equal(d.spatial_out.weight, torch.zeros_like(d.spatial_out.weight))  # starts as the UNet alone
    z, t, f = torch.randn(2, 48, 16, 16), torch.tensor([10, 900]), torch.randn(2, 256, 64)
    torch.nn.init.normal_(d.spatial_out.weight)
    with torch.no_grad():
        unet_only = d.unet(torch.cat([z, d.spatial_map(f, (16, 16))], 1), t, encoder_hidden_states=d.condition(f)).sample
        guess = d.spatial_out(d.spatial_map(f, (16, 16)))
        torch.testing.assert_close(d(z, t, f), unet_only + guess)
    assert build_decoder(0, DecoderConfig(spatial_dim=0)).spatial_out is None  # no grid, no skip


def test_sdxl_kind_refuses_the_tiny_spatial_input():
    from puma_nb.config import ConfigError
    with pytest.raises(ConfigError, match="spatial_dim must be 0"):
        DecoderConfig(kind="sdxl", feature_dim=1024, cross_attention_dim=2048, spatial_dim=64).validate()
    with torch.device("meta"):
        assert build_decoder(0, DecoderConfig(kind="sdxl", feature_dim=1024, cross_attention_dim=2048, spatial_dim=0)).spatial is None


def test_saved_decoder_keeps_its_noise_schedule_and_sampling_uses_it(tmp_path):
    d = build_decoder(3).eval()
    d.scheduler_config = {"prediction_type": "sample", "beta_schedule": "linear", "beta_end": 0.02, "clip_sample": True}
    save_puma_decoder(d, tmp_path / "unet_4")
    d1 = load_puma_decoder(tmp_path / "unet_4").eval()
    assert d1.scheduler_config == d.scheduler_config
    assert all(torch.equal(a, b) for a, b in zip(d1.spatial.state_dict().values(), d.spatial.state_dict().values()))
    f, fn = torch.randn(2, 4, 64), torch.randn(1, 4, 64)
    g = lambda: torch.Generator().manual_seed(0)
    a = sample(d1, f, fn, (48, 16, 16), steps=3, scheduler="ddim", generator=g())
    b = sample(d1, f, fn, (48, 16, 16), steps=3, scheduler="ddim", generator=g(), prediction_type="epsilon")
    assert torch.equal(a, sample(d, f, fn, (48, 16, 16), steps=3, scheduler="ddim", generator=g()))
    assert not torch.allclose(a, b)  # an override of the saved schedule changes the result


def test_guidance_one_runs_the_conditional_branch_alone():
    d = build_decoder(2).eval()
    f, fn = torch.randn(2, 16, 64), torch.randn(1, 16, 64)
    g = lambda: torch.Generator().manual_seed(0)
    one = sample(d, f, fn, (48, 16, 16), steps=3, guidance=1.0, scheduler="ddim", generator=g())
    two = sample(d, f, fn, (48, 16, 16), steps=3, guidance=1.0 + 1e-7, scheduler="ddim", generator=g())  # both branches
    assert torch.allclose(one, two, atol=1e-4)


def test_a_coarse_decoder_starts_from_a_finer_one():
    from puma_nb.config import ConfigError
    from puma_nb.decoder_stage import init_from
    torch.manual_seed(0)
    d0, d3 = build_decoder(0, DecoderConfig()), build_decoder(3, DecoderConfig())
    left = init_from(d3, d0)
    assert left == [] or all(k.startswith("embed_img_pos") for k in left)
    s0, s3 = d0.state_dict(), d3.state_dict()
    assert all(torch.equal(s3[k], s0[k]) for k in s3 if k in s0 and s0[k].shape == s3[k].shape)
    with pytest.raises(ConfigError, match="another shape"):
        init_from(build_decoder(3, DecoderConfig(block_out_channels=(16, 32))), d0)


def test_a_coarse_decoder_can_start_its_skip_at_zero():
    from puma_nb.decoder_stage import init_from
    torch.manual_seed(0)
    d0 = build_decoder(0, DecoderConfig())
    with torch.no_grad(): d0.spatial_out.weight.normal_(); d0.spatial_out.bias.normal_()  # a trained skip
    d1 = build_decoder(1, DecoderConfig())
    left = init_from(d1, d0, skip=False)
    assert {"spatial_out.weight", "spatial_out.bias"} <= set(left)
    assert not d1.spatial_out.weight.any() and not d1.spatial_out.bias.any()  # the fresh decoder's zeros
    assert torch.equal(d1.spatial[0].weight, d0.spatial[0].weight)  # the reader itself is copied
    assert torch.equal(d1.unet.conv_in.weight, d0.unet.conv_in.weight)
    d1b = build_decoder(1, DecoderConfig())
    init_from(d1b, d0)  # the default copies the skip too
    assert torch.equal(d1b.spatial_out.weight, d0.spatial_out.weight)


def _head_widths(d):
    return {m.inner_dim // m.heads for n, m in d.unet.named_modules() if n.endswith(("attn1", "attn2"))}


def test_tiny_heads_are_head_dim_wide_and_old_checkpoints_keep_their_heads(tmp_path):
    # diffusers reads `attention_head_dim` as a head count: DecoderConfig.head_dim turns it into channels per head
    assert _head_widths(build_decoder(0)) == {32}
    assert _head_widths(build_decoder(0, DecoderConfig(block_out_channels=(64, 128), head_dim=64))) == {64}
    from puma_nb.config import ConfigError
    with pytest.raises(ConfigError, match="head_dim 48 must divide"):
        DecoderConfig(head_dim=48).validate()
    # a decoder saved before head_dim existed (32 heads of 2 channels) loads with the heads it was trained with
    old = build_decoder(0)
    old.unet = type(old.unet).from_config({**old.unet.config, "attention_head_dim": 32})
    save_puma_decoder(old, tmp_path / "unet_256")
    new = load_puma_decoder(tmp_path / "unet_256")
    assert _head_widths(new) == {2}
    z, t, f = torch.randn(2, 48, 16, 16), torch.tensor([5, 700]), torch.randn(2, 256, 64)
    assert torch.equal(old(z, t, f), new(z, t, f))


def test_reader_weight_adds_the_readers_own_x0_loss_on_kept_conditions():
    from puma_nb.decoder_stage import DecoderRunConfig, DiffusionConfig
    d = build_decoder(1)
    torch.nn.init.normal_(d.spatial_out.weight, std=0.1)
    sch = make_scheduler("ddpm", prediction_type="sample", beta_schedule="linear", beta_end=0.02)
    z0, f, f_null = torch.randn(4, 48, 16, 16), torch.randn(4, 64, 64), torch.zeros(1, 64, 64)
    g = lambda: torch.Generator().manual_seed(5)
    base = decoder_loss(d, z0, f, f_null, sch, p_null=0.0, generator=g())
    with_reader = decoder_loss(d, z0, f, f_null, sch, p_null=0.0, generator=g(), reader_weight=0.5)
    guess = d.spatial_out(d.spatial_map(f, (16, 16)))
    torch.testing.assert_close(with_reader - base, 0.5 * ((guess - z0) ** 2).mean())
    all_null = lambda w: decoder_loss(d, z0, f, f_null, sch, p_null=1.0, generator=g(), reader_weight=w)
    torch.testing.assert_close(all_null(0.5), all_null(0.0))  # a null condition has no picture: no reader term
    from puma_nb.config import ConfigError
    with pytest.raises(ConfigError, match="prediction_type"):
        DecoderRunConfig(diffusion=DiffusionConfig(reader_weight=1.0)).validate()  # the default predicts epsilon
    with pytest.raises(ConfigError, match="spatial_skip"):
        DecoderRunConfig(model=DecoderConfig(spatial_skip=False),
                         diffusion=DiffusionConfig(prediction_type="sample", reader_weight=1.0)).validate()
    with pytest.raises(ValueError, match="spatial_skip"):
        decoder_loss(build_decoder(1, DecoderConfig(spatial_skip=False)), z0, f, f_null, sch, reader_weight=1.0)
    # the weight applies to the scales named in reader_scales only (D0 by default); elsewhere the run is A.1's loss
    diff = DiffusionConfig(prediction_type="sample", reader_weight=0.5)
    assert [DecoderRunConfig(scale=i, diffusion=diff).reader_weight for i in range(5)] == [0.5, 0, 0, 0, 0]
    DecoderRunConfig(scale=3, diffusion=DiffusionConfig(reader_weight=1.0)).validate()  # not used at scale 3: no error
    with pytest.raises(ConfigError, match="reader_scales"):
        DecoderRunConfig(diffusion=DiffusionConfig(prediction_type="sample", reader_weight=1.0, reader_scales=(5,))).validate()


def test_forward_returns_the_skips_guess_inside_its_prediction():
    torch.manual_seed(0)
    d = build_decoder(0, DecoderConfig())
    with torch.no_grad(): d.spatial_out.weight.normal_()  # a trained skip
    z, t, f = torch.randn(2, 48, 16, 16), torch.tensor([10, 500]), torch.randn(2, 256, 64)
    out, guess = d(z, t, f, return_guess=True)
    assert torch.allclose(out, d(z, t, f)) and guess.shape == out.shape and guess.abs().sum() > 0
    assert torch.allclose(guess, d.spatial_out(d.spatial_map(f, (16, 16))))
    assert build_decoder(0, DecoderConfig(spatial_skip=False))(z, t, f, return_guess=True)[1] is None


def test_upsample_tokens_inverts_eq1_on_constant_blocks():
    from puma_nb.decoder import upsample_tokens
    from puma_nb.pyramid import pyramid
    fs = pyramid(torch.randn(2, 256, 8))
    torch.testing.assert_close(pyramid(upsample_tokens(fs[1]))[1], fs[1])  # ↑ then Eq. 1's pooling: the parents back
    assert upsample_tokens(torch.arange(4.).view(1, 4, 1))[0, :, 0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="not a square grid"):
        upsample_tokens(torch.randn(1, 8, 4))


def test_real_data_reaches_the_encoder_as_the_mllms_pictures_do():
    "A decoder item from shards carries the encoder's input (`clip_image`, PUMA's PIL resize); the loss encodes that, not the VAE's picture."
    from puma_nb.decoder_stage import DiffusionConfig, decoder_loss_fn
    seen = []
    class Enc(torch.nn.Module):
        def forward(self, x): seen.append(tuple(x.shape)); return torch.zeros(len(x), 256, 64)
    f_null = torch.zeros(1, 256, 64)
    loss_fn = decoder_loss_fn(Enc(), PatchSpace(), f_null, 0, DiffusionConfig())
    d = build_decoder(0)
    loss_fn(d, {"image": torch.rand(2, 3, 64, 64), "clip_image": torch.rand(2, 3, 32, 32)})
    loss_fn(d, {"image": torch.rand(2, 3, 64, 64)})  # ShapesWorld: one picture serves both
    assert seen == [(2, 3, 32, 32), (2, 3, 64, 64)]
