"ShapesWorld: the parser inverts the renderer; bad images get a clear answer; splits are disjoint; every task works."
import json

import numpy as np
import pytest
import torch
from PIL import Image

from puma_nb import toyworld as tw
from puma_nb.parser import Parsed, parse


def test_parse_inverts_render_on_10000_random_scenes():
    rng = np.random.default_rng(2024)
    for _ in range(10_000):
        s = tw.sample_scene(rng)
        p = parse(tw.render(s))
        assert p.scene == s and p.valid and p.confidence == 1.0, (s, p)


def test_parse_inverts_every_edit_target_and_condition_target():
    rng = np.random.default_rng(7)
    for i in range(400):
        s = tw.split_scene("train", i)
        for kind in tw.EDIT_KINDS:
            e = tw.sample_edit(s, rng, kind)
            assert tw.world_problems(e.target, 0, 3) == []
            p = parse(tw.render(e.target))
            assert p.valid and p.scene == e.target, (kind, e, p)
        for kind in tw.CONDITION_KINDS:
            c = tw.make_condition(s, kind, rng)
            assert parse(tw.render(c.target)).scene == s
            # a condition image is not a scene: the parser says so without raising
            q = parse(c.image)
            assert isinstance(q, Parsed) and 0.0 <= q.confidence <= 1.0


def test_all_edit_kinds_change_exactly_what_they_say():
    rng = np.random.default_rng(3)
    for i in range(300):
        s = tw.split_scene("val", i)
        e = tw.sample_edit(s, rng)
        src, tgt = s, e.target
        if e.kind == "change_background":
            assert tgt.objects == src.objects and tgt.background != src.background
        elif e.kind == "add":
            assert len(tgt.objects) == len(src.objects) + 1 and set(src.objects) < set(tgt.objects)
        elif e.kind == "remove":
            assert len(tgt.objects) == len(src.objects) - 1 and set(tgt.objects) < set(src.objects)
        else:
            (old,) = set(src.objects) - set(tgt.objects)
            (new,) = set(tgt.objects) - set(src.objects)
            changed = {f for f in ("shape", "color", "size", "position") if getattr(old, f) != getattr(new, f)}
            assert changed == {"recolor": {"color"}, "move": {"position"}, "resize": {"size"},
                               "replace_shape": {"shape"}}[e.kind]
            assert old.name in e.instruction


@pytest.mark.parametrize("bad", [
    "not an image", None, 3.5, np.zeros((0, 0, 3), np.uint8), np.zeros((5,), np.uint8),
    np.full((64, 64, 3), np.nan, np.float32), np.zeros((64, 64, 7), np.uint8),
])
def test_non_images_get_a_clear_answer(bad):
    p = parse(bad)
    assert p.scene is None and p.confidence == 0.0 and not p.valid
    assert p.problems and p.problems[0].startswith("not an image")


def test_corrupted_and_foreign_images_are_flagged_not_crashed():
    s = tw.Scene("gray", (tw.Obj("circle", "red", "large", "top left"), tw.Obj("square", "cyan", "small", "center")))
    img = tw.render(s)
    rng = np.random.default_rng(0)
    cases = {
        "noise": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "gradient photo": np.stack([*np.meshgrid(np.linspace(0, 255, 200), np.linspace(0, 255, 150)), np.full((150, 200), 90.0)], -1).astype(np.uint8),
        "blacked half": np.where(np.arange(64)[None, :, None] < 32, 0, img).astype(np.uint8),
        "stray blob": img.copy(),
        "shifted": np.roll(img, 5, axis=1),
    }
    cases["stray blob"][0:3, 25:40] = tw.COLORS["yellow"]
    for name, x in cases.items():
        p = parse(x)
        assert isinstance(p, Parsed) and not p.valid and p.problems, name
        assert 0.0 <= p.confidence < 1.0, (name, p.confidence)
    # a noisy copy still reads as the right scene, flagged and with confidence below 1
    noisy = np.clip(img.astype(int) + rng.integers(-25, 26, img.shape), 0, 255).astype(np.uint8)
    p = parse(noisy)
    assert p.scene == s and not p.valid
    # the input formats a model may hand over all work
    for x in (Image.fromarray(img), tw.to_tensor(img), tw.to_tensor(img).numpy(), np.dstack([img, np.full((64, 64), 255, np.uint8)])):
        assert parse(x).scene == s
    up = np.asarray(Image.fromarray(img).resize((256, 256), Image.NEAREST))
    assert parse(up).scene == s and "resized from 256×256 to 64×64" in parse(up).problems


def test_splits_are_deterministic_and_disjoint():
    keys = {sp: {tw.scene_key(tw.split_scene(sp, i)) for i in range(2000)} for sp in tw.SPLITS}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert [tw.split_scene("test", i) for i in range(20)] == [tw.split_scene("test", i) for i in range(20)]
    assert all(tw.split_of(tw.split_scene("val", i)) == "val" for i in range(100))
    assert tw.split_scene("train", 0, seed=1) != tw.split_scene("train", 0, seed=0)
    # every sampled scene follows the world's rules
    assert all(tw.world_problems(tw.split_scene("train", i)) == [] for i in range(2000))


def test_questions_have_the_right_answers():
    rng = np.random.default_rng(5)
    for i in range(500):
        s = tw.split_scene("test", i)
        q = tw.sample_qa(s, rng)
        if q.kind == "background": assert q.answer == s.background
        elif q.kind == "count" and "objects" in q.question: assert q.answer == tw.NUMBERS[len(s.objects)]
        elif q.kind == "color":
            pos = q.question.split("at the ")[1].rstrip("?")
            assert q.answer == next(o.color for o in s.objects if o.position == pos)
        elif q.kind == "position":
            assert any(o.position == q.answer and o.name in q.question for o in s.objects)
        elif q.kind == "exists":
            color, shape = q.question[len("is there a "):-1].split()
            assert q.answer == ("yes" if any(o.color == color and o.shape == shape for o in s.objects) else "no")


def test_grounding_boxes_in_224_bins():
    for i in range(200):
        s = tw.split_scene("train", i)
        for g in tw.grounding(s):
            assert all(0 <= b < tw.N_POS_BINS for b in g["bins"])
            assert np.allclose(tw.from_bins(g["bins"]), g["box"], atol=64 / 224)
            x0, y0, x1, y1 = g["box"]
            assert x1 - x0 in (10, 18) and y1 - y0 in (10, 18)


@pytest.mark.parametrize("task", tw.TASKS)
def test_dataset_every_task(task):
    ds = tw.ShapesWorld("val", 16, task)
    b = tw.collate([ds[i] for i in range(8)])
    assert b["image"].shape == (8, 3, 64, 64) and b["image"].dtype == torch.float32
    assert 0 <= float(b["image"].min()) and float(b["image"].max()) <= 1
    assert json.dumps(b["scene"])  # JSON-serialisable
    want = {"edit": {"source", "instruction", "target_scene"}, "canny": {"condition", "instruction"},
            "inpaint": {"condition"}, "colorize": {"condition"}, "qa": {"question", "answer"},
            "grounding": {"phrase", "box", "bins"}, "caption": {"caption"}}[task]
    assert want <= set(b)
    x, y = ds[3], ds[3]
    assert torch.equal(x["image"], y["image"]) and {k: v for k, v in x.items() if not torch.is_tensor(v)} == \
        {k: v for k, v in y.items() if not torch.is_tensor(v)}
    with pytest.raises(IndexError): ds[16]


def test_read_caption_inverts_caption_and_refuses_other_text():
    rng = np.random.default_rng(7)
    scenes = [tw.sample_scene(rng) for _ in range(2000)] + [tw.Scene("gray")]
    assert all(tw.read_caption(tw.caption(s)) == s for s in scenes)
    assert tw.read_caption("  a small red square at the center on a black background ") == tw.Scene(
        "black", (tw.Obj("square", "red", "small", "center"),))
    for bad in ["", "a small red square at the center", "a small red square at the middle on a black background",
                "a small red square at the center and a large blue circle at the center on a white background",
                "a red square at the center on a black background"]:
        assert tw.read_caption(bad) is None
