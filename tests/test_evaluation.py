"Learned metrics with named stand-ins, the 5-scale max, and the real-benchmark harness on folders written here."
import json

import numpy as np
import pytest
import torch
from PIL import Image

from puma_nb import toyworld as tw
from puma_nb.evaluation import (clip_embedder, clip_i, clip_t, coco30k, dino_embedder, emu_edit, five_scale_max, imagenet_val,
                                learned_t2i, run_table1, run_table2, run_table3)
from puma_nb.instruct import InstructData


def pictures(n, start=0):
    return torch.stack([tw.to_tensor(tw.render(tw.split_scene("test", i))) for i in range(start, start + n)])


def test_stand_ins_are_named_and_scores_behave(clip_dir):
    E, D = clip_embedder(fallback=clip_dir, hub_repo="nobody/none"), dino_embedder(fallback=clip_dir, arch="no_such_dino")
    assert E.stand_in and "stand-in for CLIP ViT-B-32" in E.name and str(clip_dir) in E.name
    assert D.stand_in and "stand-in for DINO" in D.name and D.embed_text is None
    x, y = pictures(5), pictures(5, 5)
    assert torch.allclose(clip_i(E, x, x), torch.ones(5), atol=1e-5)
    assert (clip_i(E, x, y) < 1 - 1e-4).all()
    assert clip_t(E, x, ["a red circle"] * 5).shape == (5,)
    with pytest.raises(RuntimeError, match="pass fallback="): clip_embedder(hub_repo="nobody/none")
    with pytest.raises(RuntimeError, match="pass fallback="): dino_embedder(arch="no_such_dino")


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
    E, D = clip_embedder(fallback=clip_dir, hub_repo="nobody/none"), dino_embedder(fallback=clip_dir, arch="no_such_dino")
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
