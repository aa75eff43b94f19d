"Learned metrics with named stand-ins, the 5-scale max, and the real-benchmark harness on folders written here."
import json

import numpy as np
import pytest
import torch
from PIL import Image

from puma_nb import toyworld as tw
from puma_nb.evaluation import (clip_embedder, clip_from_model, clip_i, clip_t, coco30k, dino_embedder, dino_from_model, emu_edit,
                                five_scale_max, imagenet_val, learned_t2i, run_table1, run_table2, run_table3)
from puma_nb.instruct import InstructData


def pictures(n, start=0):
    return torch.stack([tw.to_tensor(tw.render(tw.split_scene("test", i))) for i in range(start, start + n)])


TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_VIT = dict(depth=1, embed_dim=32, num_heads=2)


def tiny_open_clip(quick_gelu=True):
    "An open_clip `CLIP` (the class CLIP-B/32 is) with a tiny config and random weights."
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    return open_clip.CLIP(TINY_CLIP["embed_dim"], CLIPVisionCfg(**TINY_CLIP["vision_cfg"]), CLIPTextCfg(**TINY_CLIP["text_cfg"]),
                          quick_gelu=quick_gelu).eval()


def tiny_vit():
    "A timm ViT-S/16 (the class DINO-S/16 is) one block deep and 32 wide, random weights, no head."
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, **TINY_VIT).eval()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    "An empty Hugging Face cache; `put(repo, file, write)` stores a file in it as a download would."
    import huggingface_hub.constants
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def put(repo, name, write):
        root, rev = cache / f"models--{repo.replace('/', '--')}", "0" * 40
        (root / "snapshots" / rev).mkdir(parents=True, exist_ok=True)
        (root / "refs").mkdir(exist_ok=True); (root / "refs" / "main").write_text(rev)
        write(root / "snapshots" / rev / name)
        return root / "snapshots" / rev / name
    return put


def _check_embedder(E, width):
    "Unit embeddings of the right width; a picture's cosine with itself 1, with another less; the same in a batch as alone."
    x, y = pictures(4), pictures(4, 4)
    e = E.embed_image(x)
    assert e.shape == (4, width) and torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(clip_i(E, x, x), torch.ones(4), atol=1e-5) and (clip_i(E, x, y) < 1 - 1e-4).all()
    assert torch.allclose(E.embed_image(x[2:3]), e[2:3], atol=1e-5)


def test_clip_from_model_embeds_with_a_tiny_open_clip():
    import open_clip
    E = clip_from_model(tiny_open_clip(), open_clip.tokenizer.SimpleTokenizer(context_length=16), "tiny")
    assert (E.name, E.stand_in) == ("tiny", False)
    _check_embedder(E, 32)
    t = E.embed_text(["a red circle", "a blue square", "a red circle"])
    assert t.shape == (3, 32) and torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(t[0] @ t[2]) == pytest.approx(1, abs=1e-5) and float(t[0] @ t[1]) < 1 - 1e-4
    x = pictures(3)
    assert torch.allclose(clip_t(E, x, ["a red circle"] * 3), E.embed_image(x) @ t[0], atol=1e-5)


def test_dino_from_model_embeds_with_a_tiny_timm_vit():
    D = dino_from_model(tiny_vit(), "tiny")
    assert D.embed_text is None and not D.stand_in
    _check_embedder(D, 32)
    with pytest.raises(ValueError, match="embeds no text"): clip_t(D, pictures(1), ["a"])


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    "TINY_CLIP as an open_clip model name."
    import open_clip
    f = tmp_path_factory.mktemp("arch") / "puma-test-tiny-clip.json"
    f.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(f)
    return f.stem


def test_clip_embedder_loads_the_weights_it_finds_with_the_asked_activation(tiny_arch, hub_cache):
    "The real path end to end: weights found in the hub cache, the model built by open_clip with them and QuickGELU."
    import open_clip
    from safetensors.torch import save_file
    saved = tiny_open_clip(quick_gelu=True)
    hub_cache("test/tiny-clip", "open_clip_model.safetensors", lambda p: save_file(saved.state_dict(), str(p)))
    E = clip_embedder(arch=tiny_arch, hub_repo="test/tiny-clip", quick_gelu=True)
    assert not E.stand_in and E.name == "CLIP puma-test-tiny-clip (openai, QuickGELU)"
    ref = clip_from_model(saved, open_clip.tokenizer.SimpleTokenizer(context_length=16), "saved")
    x = pictures(3)
    assert torch.allclose(E.embed_image(x), ref.embed_image(x), atol=1e-6)  # the saved weights, not a fresh initialisation
    assert torch.allclose(E.embed_text(["a red circle"]), ref.embed_text(["a red circle"]), atol=1e-6)
    gelu = clip_embedder(arch=tiny_arch, hub_repo="test/tiny-clip", quick_gelu=False)  # the same weights, plain GELU
    assert not torch.allclose(gelu.embed_image(x), ref.embed_image(x), atol=1e-5)


def test_clip_embedder_builds_openai_clip_b32_with_quick_gelu(hub_cache, monkeypatch):
    "OpenAI's CLIP-B/32 weights were trained with QuickGELU: the model is built with it, from the file found; a tag trained with GELU is not."
    import open_clip
    built = []
    def create_model(arch, pretrained=None, force_quick_gelu=False, **kw):
        built.append((arch, pretrained, force_quick_gelu))
        return tiny_open_clip(quick_gelu=force_quick_gelu)
    monkeypatch.setattr(open_clip, "create_model", create_model)
    openai = hub_cache("timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors", lambda p: p.write_bytes(b"weights"))
    E = clip_embedder()
    assert built == [("ViT-B-32", str(openai), True)] and E.name == "CLIP ViT-B-32 (openai, QuickGELU)" and not E.stand_in
    laion = hub_cache("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_pytorch_model.bin", lambda p: p.write_bytes(b"weights"))
    E = clip_embedder(pretrained="laion2b_s34b_b79k")  # no safetensors file in the cache: the .bin
    assert built[-1] == ("ViT-B-32", str(laion), False) and E.name == "CLIP ViT-B-32 (laion2b_s34b_b79k)"


def test_dino_embedder_loads_the_weights_it_finds(hub_cache):
    from safetensors.torch import save_file
    saved = tiny_vit()
    hub_cache("test/tiny-dino", "model.safetensors", lambda p: save_file(saved.state_dict(), str(p)))
    D = dino_embedder(arch="vit_small_patch16_224", hub_repo="test/tiny-dino", **TINY_VIT)
    assert not D.stand_in and D.name == "DINO vit_small_patch16_224 (timm)"
    x = pictures(3)
    assert torch.allclose(D.embed_image(x), dino_from_model(saved, "saved").embed_image(x), atol=1e-6)


def test_missing_weights_give_the_named_stand_in_or_an_error_naming_them(clip_dir, tmp_path):
    E, D = clip_embedder(fallback=clip_dir, hub_repo="nobody/none"), dino_embedder(fallback=clip_dir, hub_repo="nobody/none")
    assert E.stand_in and "stand-in for CLIP ViT-B-32" in E.name and str(clip_dir) in E.name and "nobody/none" in E.name
    assert D.stand_in and "stand-in for DINO" in D.name and D.embed_text is None and "nobody/none" in D.name
    x, y = pictures(5), pictures(5, 5)
    assert torch.allclose(clip_i(E, x, x), torch.ones(5), atol=1e-5) and torch.allclose(clip_i(D, x, x), torch.ones(5), atol=1e-5)
    assert (clip_i(E, x, y) < 1 - 1e-4).all() and (clip_i(D, x, y) < 1 - 1e-4).all()
    assert clip_t(E, x, ["a red circle"] * 5).shape == (5,)
    with pytest.raises(FileNotFoundError, match=r"CLIP ViT-B-32 \(openai\) weights are missing: timm/vit_base_patch32_clip_224.openai "
                       r"\(open_clip_model.safetensors, open_clip_pytorch_model.bin\).*pass fallback="):
        clip_embedder()
    with pytest.raises(FileNotFoundError, match=r"timm/vit_small_patch16_224.dino \(model.safetensors, pytorch_model.bin\).*pass fallback="):
        dino_embedder()
    with pytest.raises(FileNotFoundError, match="no tiny CLIP in"): clip_embedder(fallback=tmp_path, hub_repo="nobody/none")  # nor a stand-in


def test_an_error_that_is_no_missing_weights_is_never_a_stand_in(clip_dir, tiny_arch, hub_cache, monkeypatch):
    "Weights found, the model builder fails or the file is corrupt: the error propagates, even with a fallback; so do unknown tags and architectures."
    import open_clip, timm
    hub_cache("timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors", lambda p: p.write_bytes(b"weights"))
    hub_cache("timm/vit_small_patch16_224.dino", "model.safetensors", lambda p: p.write_bytes(b"weights"))
    def broken(*a, **kw): raise RuntimeError("a bug in the real path")
    with monkeypatch.context() as m:
        m.setattr(open_clip, "create_model", broken)
        with pytest.raises(RuntimeError, match="a bug in the real path"): clip_embedder(fallback=clip_dir)
        m.setattr(timm, "create_model", broken)
        with pytest.raises(RuntimeError, match="a bug in the real path"): dino_embedder(fallback=clip_dir)
    hub_cache("test/corrupt", "open_clip_model.safetensors", lambda p: p.write_bytes(b"not a weights file"))
    hub_cache("test/corrupt", "model.safetensors", lambda p: p.write_bytes(b"not a weights file"))
    for make in (lambda: clip_embedder(fallback=clip_dir, arch=tiny_arch, hub_repo="test/corrupt"),
                 lambda: dino_embedder(fallback=clip_dir, arch="vit_small_patch16_224", hub_repo="test/corrupt", **TINY_VIT)):
        with pytest.raises(Exception) as e: make()  # found in the cache, but no weights: an error, not a stand-in
        assert "stand-in" not in str(e.value) and not isinstance(e.value, FileNotFoundError)
    with pytest.raises(ValueError, match="neither a file nor a hub-hosted tag"): clip_embedder(fallback=clip_dir, pretrained="no_such_tag")
    with pytest.raises(ValueError, match="timm knows no hub weights"): dino_embedder(fallback=clip_dir, arch="no_such_dino")


def test_five_scale_max_is_the_mean_of_per_prompt_maxima():
    s = {i: torch.tensor([0.1 * i, 0.5, 1 - 0.1 * i]) for i in range(5)}
    assert five_scale_max(s) == pytest.approx((0.4 + 0.5 + 1.0) / 3)
    assert five_scale_max(s) >= max(float(v.mean()) for v in s.values())


def test_learned_t2i_scores_the_true_pictures_highest(clip_dir):
    E = clip_embedder(fallback=clip_dir, hub_repo="nobody/none")
    items = [InstructData("t2i", 6, "test")[k] for k in range(6)]
    truth = torch.stack([it["image"] for it in items])
    rows = learned_t2i(E, items, {0: truth, 4: truth.roll(1, 0)})
    assert rows["f0"]["clip_i"] == pytest.approx(1.0, abs=1e-4) and rows["f4"]["clip_i"] < rows["f0"]["clip_i"]
    assert rows["max5"]["clip_i"] == pytest.approx(1.0, abs=1e-4)


def _write(folder, n, manifest):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        s = tw.split_scene("test", i)
        Image.fromarray(tw.render(s)).save(folder / f"{i}.png")
        rows.append({"image": f"{i}.png", "source": f"{i}.png", "caption": tw.caption(s), "instruction": "change the background to black",
                     "target_caption": tw.caption(tw.Scene("black", s.objects))})
    if manifest: (folder / manifest).write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_harness_names_what_a_folder_lacks(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"): imagenet_val(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .JPEG pictures"): imagenet_val(tmp_path / "empty")
    _write(tmp_path / "coco", 3, None)
    with pytest.raises(FileNotFoundError, match="has no captions.jsonl"): coco30k(tmp_path / "coco")
    (tmp_path / "coco" / "captions.jsonl").write_text(json.dumps({"image": "9.png", "caption": "a"}) + "\n")
    with pytest.raises(FileNotFoundError, match="9.png is missing"): coco30k(tmp_path / "coco")
    (tmp_path / "coco" / "captions.jsonl").write_text(json.dumps({"image": "0.png"}) + "\n")
    with pytest.raises(ValueError, match=r"lacks \['caption'\]"): coco30k(tmp_path / "coco")
    with pytest.raises(FileNotFoundError, match="has no edits.jsonl"): emu_edit(tmp_path / "coco")


def test_harness_runs_tables_1_2_3_on_written_folders(tmp_path, clip_dir):
    from puma_nb.reconstruction import lpips_metric
    E, D = clip_embedder(fallback=clip_dir, hub_repo="nobody/none"), dino_embedder(fallback=clip_dir, hub_repo="nobody/none")
    lp, _ = lpips_metric()
    _write(tmp_path / "imagenet", 4, None)
    t1 = run_table1(tmp_path / "imagenet", lambda x, i, s: x, lp, n=4, size=64, batch_size=2)  # a perfect reconstruction
    assert set(t1) == {f"f{i}" for i in range(5)} and t1["f0"]["psnr_r"] > 90 and t1["f4"]["lpips_r"] == pytest.approx(0, abs=1e-6)
    _write(tmp_path / "coco", 4, "captions.jsonl")
    x, caps = coco30k(tmp_path / "coco", size=64)
    t2 = run_table2(tmp_path / "coco", lambda c, i, s: x[[caps.index(t) for t in c]] if i == 0 else x.flip(0)[:len(c)], E, lp,
                    size=64, batch_size=4)
    assert t2["f0"]["clip_i"] == pytest.approx(1.0, abs=1e-4) and t2["max5"]["clip_i"] >= t2["f3"]["clip_i"]
    assert t2["f2"]["lpips_d"] == pytest.approx(0, abs=1e-6)  # the same picture for both seeds: no diversity
    _write(tmp_path / "emu", 4, "edits.jsonl")
    t3 = run_table3(tmp_path / "emu", lambda im, ins, i: im, E, D, size=64, batch_size=2)  # "edits" that change nothing
    assert t3["f0"]["clip_i"] == pytest.approx(1.0, abs=1e-4) and t3["f0"]["dino"] == pytest.approx(1.0, abs=1e-4)
    assert set(t3) == {"f0", "f1", "max5"}
