"Eq. 1 and the encoder: PUMA's preprocessing, last-layer tokens before ln_post, CLIP-L on meta, the tiny CLIP stage."
import os

import numpy as np
import open_clip
import pytest
import torch

from puma_nb.pyramid import (CLIP_L, SCALES, CLIPEncoder, ClipRunConfig, HFCLIPEncoder, TinyClipConfig, check_activation, clip_l,
                             clip_l_folder, load_clip, load_encoder, puma_image, pyramid, save_clip, tiny_clip, tiny_encoder,
                             train_clip, uses_quick_gelu, vision_model_from_open_clip)
from puma_nb.training import TrainConfig


def test_pyramid_is_successive_2x2_average_pooling_row_major():
    f0 = torch.randn(3, 16, 16, 5)  # (B, H, W, C)
    fs = pyramid(f0.reshape(3, 256, 5))
    assert [f.shape for f in fs] == [(3, n, 5) for n in SCALES]
    for i, f in enumerate(fs):
        s = 16 >> i
        want = f0.reshape(3, s, 16 // s, s, 16 // s, 5).mean((2, 4)).reshape(3, s * s, 5)  # blocks of 2^i × 2^i
        assert torch.allclose(f, want, atol=1e-5), i
    assert torch.allclose(pyramid(f0.permute(0, 3, 1, 2))[2], fs[2])  # (B, C, H, W) input too


def test_encoder_takes_last_layer_patch_tokens_before_ln_post():
    torch.manual_seed(0)
    m = tiny_clip()
    with torch.no_grad(): m.visual.ln_post.weight.mul_(3.0).add_(0.5)  # make ln_post visible
    enc = tiny_encoder(m)
    x = torch.rand(2, 3, 64, 64)
    f0 = enc(x)
    v = m.visual
    h = v.transformer(v._embeds(enc.preprocess(x)))
    assert torch.allclose(f0, h[:, 1:], atol=1e-6)                 # CLS dropped, no ln_post
    assert not torch.allclose(f0, v.ln_post(h)[:, 1:], atol=1e-3)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    enc.train(); assert not enc.training                             # stays frozen


def test_preprocessing_resizes_without_cropping():
    enc = tiny_encoder(tiny_clip())
    x = torch.zeros(1, 3, 100, 300)
    x[..., :30] = 1.0  # a white band at the left edge: a centre crop would cut it away
    p = enc.preprocess(x) * enc.std + enc.mean
    assert p.shape == (1, 3, 64, 64)
    assert p[..., :5].mean() > 0.95 and p[..., 10:].mean() < 0.05
    assert torch.allclose(enc.mean.flatten(), torch.tensor(open_clip.OPENAI_DATASET_MEAN))


def test_clip_l_on_meta_gives_16x16x1024_with_quick_gelu():
    enc = CLIPEncoder(open_clip.create_model(CLIP_L, device="meta").visual, 224)
    f0 = enc(torch.rand(1, 3, 512, 384, device="meta"))
    assert f0.shape == (1, 256, 1024) and [f.shape[1] for f in pyramid(f0)] == list(SCALES)
    assert uses_quick_gelu(enc.visual)  # OpenAI trained CLIP-L with QuickGELU
    assert open_clip.get_pretrained_cfg("ViT-L-14", "openai")["quick_gelu"]  # what clip_l checks its tag against


def test_clip_l_refuses_an_activation_its_weights_were_not_trained_with():
    with pytest.raises(ValueError, match="'openai' weights were trained with QuickGELU"):
        clip_l("openai", quick_gelu=False)  # refused from the tag, before any download
    gelu = open_clip.create_model("ViT-L-14", device="meta").visual
    assert not uses_quick_gelu(gelu)
    with pytest.raises(ValueError, match="trained with QuickGELU but the model runs GELU"):
        check_activation(gelu, True, "OpenAI's CLIP-L")


def test_clip_l_without_weights_is_a_clear_error():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(RuntimeError, match="could not load CLIP ViT-L-14 weights 'openai'"):
        clip_l("openai", device="meta")


def test_open_clip_and_pumas_transformers_folder_give_the_same_f0(tmp_path):
    from _helpers import puma_clip_folder, small_quick_gelu_clip
    clip = small_quick_gelu_clip()
    folder = puma_clip_folder(clip.visual, tmp_path / "clip-vit-large-patch14")
    hf = load_encoder(f"clip-l:{folder}")  # a folder after clip-l: is PUMA's transformers CLIP
    assert isinstance(hf, HFCLIPEncoder) and (hf.grid, hf.width) == (16, 64) and uses_quick_gelu(hf.visual)
    x = torch.rand(2, 3, 224, 224)
    f0 = CLIPEncoder(clip.visual, 224)(x)
    assert f0.shape == (2, 256, 64)
    torch.testing.assert_close(hf(x), f0, atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in hf.parameters()) and not hf.training


def test_a_transformers_folder_with_the_wrong_activation_is_refused(tmp_path):
    import json
    from _helpers import puma_clip_folder, small_quick_gelu_clip
    folder = puma_clip_folder(small_quick_gelu_clip().visual, tmp_path / "clip")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vision_config"]["hidden_act"] = "gelu"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="trained with QuickGELU but the model runs GELU"):
        clip_l_folder(folder)
    with pytest.raises(FileNotFoundError, match="not a transformers CLIP folder"):
        clip_l_folder(tmp_path / "nothing")


def test_pumas_resize_is_pils_antialiased_bilinear_and_the_tensor_path_matches_it():
    from PIL import Image, ImageFilter
    rng = np.random.default_rng(0)
    im = Image.fromarray((rng.random((448, 448, 3)) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
    x = puma_image(im)
    assert puma_image(im.resize((448, 224))).shape == (3, 224, 224)  # squashed, not cropped
    want = torch.from_numpy(np.asarray(im.resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255).permute(2, 0, 1)
    assert x.shape == (3, 224, 224) and torch.equal(x, want)
    enc = CLIPEncoder(torch.nn.Identity(), 224, mean=(0, 0, 0), std=(1, 1, 1))
    from_tensor = enc.preprocess(puma_image(im, 448)[None])[0]  # the 448-px tensor shrunk by the encoder itself
    assert (from_tensor - x).abs().mean() < 1 / 255  # antialiased: within rounding of PIL's result
    aliased = torch.nn.functional.interpolate(puma_image(im, 448)[None], size=(224, 224), mode="bilinear")[0]
    print((from_tensor - x).abs().mean(), (aliased - x).abs().mean())
    assert (aliased - x).abs().mean() > 2 * (from_tensor - x).abs().mean()  # the old, aliased resize was further off


def test_tiny_clip_trains_its_image_tower_and_round_trips(tmp_path):
    cfg = ClipRunConfig(train=TrainConfig(steps=3, batch_size=8, lr=1e-3, log_every=1, out_dir=str(tmp_path), progress=False))
    cfg.data.n_test = 16
    torch.manual_seed(0)
    before = tiny_clip(cfg.model).visual.conv1.weight.clone()  # train_clip seeds with train.seed=0 too
    res = train_clip(cfg)
    assert res.status == "done" and {"t2i_top1", "i2t_top1", "dense"} <= set(res.last)  # the recipe's token loss too
    model, mcfg = load_clip(tmp_path / "model")
    assert mcfg == cfg.model
    assert not torch.equal(model.visual.conv1.weight, before)  # the image tower learned
    save_clip(model, mcfg, tmp_path / "again")
    again, _ = load_clip(tmp_path / "again")
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(tiny_encoder(model, mcfg)(x), tiny_encoder(again, mcfg)(x))


def test_tiny_config_is_checked():
    from puma_nb.config import ConfigError, from_dict
    with pytest.raises(ConfigError, match="16×16 grid"):
        from_dict(TinyClipConfig, {"patch_size": 8})


def test_windowed_tiny_clip_has_local_tokens_in_both_paths():
    """attn_window=1: a change in the top-left 2×2 patches reaches only rows and columns 0…3 (two blocks × one cell), in the
    encoder's path and in the contrastive forward, whose image embedding is ln_post of the same tokens' mean."""
    import torch.nn.functional as F
    from puma_nb.pyramid import clip_preprocess, local_attention_mask
    M = local_attention_mask(16, 2)
    assert M.shape == (257, 257) and int((M[1:, 1:] == 0).sum(1).max()) == 25 and not (M[1:, 0] == 0).any()
    torch.manual_seed(0)
    cfg = TinyClipConfig(attn_window=1)
    m = tiny_clip(cfg).eval()
    enc = tiny_encoder(m, cfg)
    x = torch.rand(2, 3, 64, 64); y = x.clone(); y[..., :8, :8] = 0
    with torch.no_grad():
        changed = ((enc(x) - enc(y)).abs().sum(-1) > 1e-6).view(2, 16, 16)
        assert int(changed[0].sum()) == 16 and changed[:, 4:].sum() == 0 and changed[:, :, 4:].sum() == 0
        out = m(clip_preprocess(x, 64, enc.mean, enc.std), torch.zeros(2, cfg.context_length, dtype=torch.long))
        want = F.normalize(m.visual.ln_post(enc(x).mean(1)) @ m.visual.proj, dim=-1)
    assert torch.allclose(out["image_features"], want, atol=1e-5)


def test_clip_saved_before_attn_window_loads_global(tmp_path):
    import json
    from puma_nb.config import ConfigError, from_dict
    torch.manual_seed(0)
    cfg = TinyClipConfig(attn_window=0)
    save_clip(tiny_clip(cfg), cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text()); del saved["attn_window"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    model, mcfg = load_clip(tmp_path)
    assert mcfg.attn_window == 0 and TinyClipConfig().attn_window == 1  # old folders keep global attention; new ones default to k = 1
    x = torch.rand(1, 3, 64, 64); y = x.clone(); y[..., :8, :8] = 0
    with torch.no_grad(): assert int(((tiny_encoder(model)(x) - tiny_encoder(model)(y)).abs().sum(-1) > 1e-6).sum()) == 256
    with pytest.raises(ConfigError, match="attn_window -1"): from_dict(TinyClipConfig, {"attn_window": -1})


def test_token_phrases_label_objects_background_and_grazed_tokens():
    from puma_nb.pyramid import token_phrases
    scene = {"background": "white", "objects": [{"shape": "square", "color": "red", "size": "large", "position": "center"}]}
    phrases = {}
    y = token_phrases(scene, phrases).view(16, 16)
    assert phrases == {"a white background": 0, "a large red square": 1}
    assert y[8, 8] == 1 and y[0, 0] == 0 and (y == -100).any()  # centre: the square; a corner: the background; its rim: left out
    covered = (y == 1).nonzero()
    assert covered[:, 0].min() >= 5 and covered[:, 0].max() <= 10  # the middle cell only (rows 5…10 of 16)
    again = token_phrases({**scene, "background": "black"}, phrases)  # a second picture adds its own phrases to the batch's
    assert phrases["a black background"] == 2 and again.view(16, 16)[0, 0] == 2


def test_dense_weight_zero_is_plain_clip_and_one_adds_the_token_loss():
    from puma_nb.pyramid import TrainableCLIP, clip_loss_fn
    from puma_nb.toyworld import ShapesWorld, collate
    torch.manual_seed(0)
    cfg = TinyClipConfig()
    net = TrainableCLIP(tiny_clip(cfg), cfg.image_size)
    ds = ShapesWorld("train", 8, "caption")
    batch = collate([ds[i] for i in range(8)])
    plain, logs0 = clip_loss_fn(cfg)(net, batch)
    both, logs1 = clip_loss_fn(cfg, 1.0)(net, batch)
    half, _ = clip_loss_fn(cfg, 0.5)(net, batch)
    assert "dense" not in logs0 and logs1["dense"] > 0
    assert torch.allclose(both, plain + logs1["dense"], atol=1e-5) and torch.allclose(half, plain + 0.5 * logs1["dense"], atol=1e-5)
    both.backward()
    assert net.clip.visual.proj.grad.abs().sum() > 0  # the projection the token loss reads learns


def test_clip_stage_with_the_token_loss_under_torchrun(tmp_path):
    import json
    from _helpers import run_train
    run_train("toy/clip.yaml", "train.steps=2", "train.warmup_steps=1", "train.batch_size=8", "data.n_train=64", "data.n_test=16",
              f"train.out_dir={tmp_path}", ranks=2)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and "dense" in rows[-1] and (tmp_path / "model" / "model.safetensors").exists()
