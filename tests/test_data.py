"Real data: img2dataset shards, the per-rank/per-worker stream, its exact resume, bad samples, JSONL manifests, cached features."
import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from puma_nb import toyworld as tw
from puma_nb.data import (FEATURE_KEYS, CachedFeatures, DataError, FeatureItem, Layout, PairItem, ShardStream, encode_image,
                          expand_shards, extract_features, read_shard, write_shards)
from puma_nb.manifests import ManifestError, position_bins, read_manifest

N = 40  # samples in the shared shards: 8 shards of 5


def key_only(sample):
    "A decoder that reads nothing but the key (and refuses samples without a picture, like `PairItem`)."
    if "jpg" not in sample: raise KeyError("no picture")
    return {"key": sample["__key__"]}


def keys_of(batch): return [(it["key"], it["_skipped"]) for it in batch]


def batches(stream, n, nw, mb=4):
    "The first `n` micro-batches a DataLoader gives, as (key, _skipped) lists."
    dl = DataLoader(stream, batch_size=mb, num_workers=nw, collate_fn=keys_of)
    return [b for _, b in zip(range(n), dl)]


@pytest.fixture(scope="module")
def world():
    ds = tw.ShapesWorld("train", N, "caption", seed=0)
    return [ds[i] for i in range(N)]


@pytest.fixture(scope="module")
def shards(world, tmp_path_factory):
    return write_shards(world, tmp_path_factory.mktemp("pairs"), per_shard=5)


@pytest.fixture(scope="module")
def bad_shards(world, tmp_path_factory):
    return write_shards(world, tmp_path_factory.mktemp("bad"), per_shard=5, corrupt=[1, 2, 17], missing=[9])


def test_shard_round_trip(world, shards, tmp_path):
    assert [p.name for p in shards] == [f"{i:05d}.tar" for i in range(8)]
    samples = [s for p in shards for s in read_shard(str(p))]
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(N)]
    assert {"jpg", "txt", "json", "__key__", "__url__"} == set(samples[3])
    meta = json.loads(samples[3]["json"])
    assert meta["caption"] == world[3]["caption"] and meta["scene"] == world[3]["scene"] and meta["key"] == "000000003"
    it = PairItem(64)(samples[3])
    assert it["caption"] == world[3]["caption"] and it["image"].shape == (3, 64, 64) and it["source"] in ("t2i", "i2t")
    assert (it["image"] - world[3]["image"]).abs().mean() < 0.02  # JPEG
    png = write_shards(world[:3], tmp_path / "png", per_shard=2, fmt="png")
    exact = [PairItem(64)(s) for p in png for s in read_shard(str(p))]
    assert all(torch.equal(e["image"], w["image"]) for e, w in zip(exact, world[:3]))  # PNG: lossless
    assert PairItem(32)(samples[3])["image"].shape == (3, 32, 32)
    # shard lists: a folder, a brace pattern and a list agree; a missing shard is named
    folder = shards[0].parent
    assert expand_shards(folder) == expand_shards(f"{folder}/{{00000..00007}}.tar") == [str(p) for p in shards]
    with pytest.raises(FileNotFoundError, match="2 of 10 shards do not exist, e.g. .*00008.tar"):
        expand_shards(f"{folder}/{{00000..00009}}.tar")


def test_ranks_and_workers_read_every_sample_once_per_epoch(shards, world, tmp_path):
    for epochs in (1, 2):
        per_slot = {}
        for rank in range(2):  # 2 ranks × 2 workers = 4 slots over 8 shards
            s = ShardStream(shards, key_only, seed=3, shuffle_buffer=4, epochs=epochs)
            s.set_position(rank, 2, 1, 0, num_workers=2)
            for b, batch in enumerate(DataLoader(s, batch_size=1, num_workers=2, collate_fn=keys_of)):
                per_slot.setdefault((rank, b % 2), []).append(batch[0][0])
        assert len(per_slot) == 4 and all(per_slot.values())
        assert Counter(k for ks in per_slot.values() for k in ks) == {f"{i:09d}": epochs for i in range(N)}  # once per epoch
    # fewer shards (3) than slots (4): the sample-level split still covers each sample exactly once
    few = write_shards(world[:12], tmp_path / "few", per_shard=4)
    got = []
    for rank in range(2):
        s = ShardStream(few, key_only, epochs=1, shuffle_buffer=3)
        s.set_position(rank, 2, 1, 0)
        got += [k for b in DataLoader(s, batch_size=2, num_workers=2, collate_fn=keys_of) for k, _ in b]
    assert sorted(got) == [f"{i:09d}" for i in range(12)]


def test_shuffle_is_deterministic_and_changes_per_epoch(shards):
    order = lambda seed, buf=8: [it["key"] for it in ShardStream(shards, key_only, seed=seed, shuffle_buffer=buf, epochs=2)]
    a = order(0)
    assert a == order(0) and a != order(1)
    assert sorted(a[:N]) == sorted(a[N:]) == [f"{i:09d}" for i in range(N)] and a[:N] != a[N:]  # epoch 2 reshuffles
    plain = [it["key"] for it in ShardStream(shards, key_only, shuffle_shards=False, shuffle_buffer=0, epochs=1)]
    assert plain == [f"{i:09d}" for i in range(N)]


class CountingPairs(PairItem):
    "`PairItem` that counts its full decodes (in-process only)."
    calls = 0
    def __call__(self, sample):
        CountingPairs.calls += 1
        return super().__call__(sample)


@pytest.mark.parametrize("nw", [0, 2])
def test_resume_is_exact(bad_shards, nw):
    s = ShardStream(bad_shards, PairItem(16), shuffle_buffer=6, seed=1, min_seen=1000)  # bad samples inside the skipped part
    full = batches(s, 30, nw)  # 120 items over ~3 epochs of 36 good samples
    for K in (1, 7, 13):
        s.set_position(0, 1, 4, K, num_workers=nw)
        assert batches(s, 30 - K, nw) == full[K:], f"resume at batch {K} with {nw} workers"
    assert s.layout == Layout(1, nw, 4)


def test_resume_skips_without_decoding(bad_shards):
    s = ShardStream(bad_shards, CountingPairs(16), shuffle_buffer=6)
    s.set_position(0, 1, 4, 20)
    CountingPairs.calls = 0
    batches(s, 2, 0)
    assert CountingPairs.calls <= 8 + 4  # the 8 items taken (and a few bad ones), not the 80 skipped


def test_resume_across_a_new_factorisation_and_a_warning_for_new_slot_counts(shards):
    # 1 rank × 2 workers consumed 3 batches of 4; then 2 ranks × 1 worker finish the epoch: nothing twice, nothing lost
    s = ShardStream(shards, key_only, shuffle_buffer=4, epochs=1)
    s.set_position(0, 1, 4, 0, num_workers=2)
    done = [k for b in batches(s, 3, 2) for k, _ in b]
    rest = []
    for rank in range(2):
        s.set_position(rank, 2, 4, 3, num_workers=0, saved=Layout(1, 2, 4))
        rest += [k for b in DataLoader(s, batch_size=4, num_workers=0, collate_fn=keys_of) for k, _ in b]
    assert Counter(done + rest) == {f"{i:09d}": 1 for i in range(N)}
    s.set_position(0, 1, 4, 5, saved=Layout(2, 2, 4))
    with pytest.warns(UserWarning, match="world_size × num_workers"):
        next(iter(s))
    s.set_position(0, 1, 4, 0, num_workers=2)
    with pytest.raises(ValueError, match="num_workers=2"):
        next(iter(s))  # told 2 workers, iterated in-process


def test_bad_samples_are_skipped_counted_and_rate_limited(bad_shards, tmp_path, world):
    items = list(ShardStream(bad_shards, PairItem(16), shuffle_shards=False, shuffle_buffer=0, epochs=1))
    assert [it["key"] for it in items] == [f"{i:09d}" for i in range(N) if i not in (1, 2, 9, 17)]
    skipped = {it["key"]: it["_skipped"] for it in items if it["_skipped"]}
    assert skipped == {"000000003": 2, "000000010": 1, "000000018": 1}  # the item after each run of bad samples
    dl = DataLoader(ShardStream(bad_shards, PairItem(16), epochs=1), batch_size=8, num_workers=2, collate_fn=lambda b: sum(it["_skipped"] for it in b))
    assert sum(dl) == 4  # the four bad samples, counted across both workers
    # mostly broken data stops the stream, naming the rate and the shard
    broken = write_shards(world[:20], tmp_path / "broken", per_shard=20, corrupt=range(0, 20, 2))
    with pytest.raises(DataError, match=r"could not be decoded.*max_bad_rate=20\.0%.*00000\.tar"):
        list(ShardStream(broken, PairItem(16), epochs=1, min_seen=10, max_bad_rate=0.2))
    assert len(list(ShardStream(broken, PairItem(16), epochs=1, min_seen=100, max_bad_rate=0.2))) == 10  # under min_seen: no stop
    # an unreadable shard is named
    cut = tmp_path / "cut.tar"
    cut.write_bytes(bad_shards[0].read_bytes()[:3000])
    with pytest.raises(DataError, match="cut.tar"):
        list(ShardStream([cut], PairItem(16), epochs=1))


def _write_pictures(folder, pictures):
    folder.mkdir(parents=True, exist_ok=True)
    for name, im in pictures.items(): (folder / name).write_bytes(encode_image(im, "png"))


def _manifest(path, lines):
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return path


def test_manifests_map_into_instruct_items(tmp_path):
    from puma_nb.instruct import IMAGE_KEYS, InstructData, instruct_collate, instruct_segments
    from puma_nb.mllm import CHAT, build_sequence, tiny_tokenizer
    from puma_nb.pyramid import tiny_clip, tiny_encoder
    assert FEATURE_KEYS == IMAGE_KEYS
    e, c = InstructData("edit", 2)[0], InstructData("conditional", 3)[1]
    _write_pictures(tmp_path, {"src.png": e["source"], "tgt.png": e["image"], "cond.png": c["condition"], "img.png": c["image"]})
    edit = read_manifest(_manifest(tmp_path / "edit.jsonl", [
        {"source": "src.png", "instruction": e["instruction"], "target": "tgt.png", "kind": e["kind"]},
        {"source": "gone.png", "instruction": "x", "target": "tgt.png"}, ""]), "edit")
    assert len(edit) == 1 and edit.skipped == 1 and edit.skip_reasons == {"picture file missing": 1}
    assert set(e) <= set(edit[0]) and torch.equal(edit[0]["source"], e["source"]) and edit[0]["instruction"] == e["instruction"]
    cond = read_manifest(_manifest(tmp_path / "cond.jsonl", [
        {"condition": "cond.png", "task": t, "caption": c["caption"], "target": "img.png"} for t in ("canny", "inpainting", "colorization")] * 4),
        "conditional", seed=0)
    assert set(c) <= set(cond[0]) and [cond[k]["kind"] for k in range(3)] == ["canny", "inpaint", "colorize"]
    prompts = [cond[k]["prompt"] for k in range(12)]
    assert c["caption"] in prompts and any(p.startswith(tw.CONDITION_INSTRUCTIONS["inpaint"]) for p in prompts)  # 50% with the instruction
    llava = read_manifest(_manifest(tmp_path / "llava.jsonl", [
        {"image": "img.png", "conversations": [{"from": "human", "value": "<image>\nwhat color is the background?"},
                                                {"from": "gpt", "value": "gray"}, {"from": "human", "value": "how many objects are there?"},
                                                {"from": "gpt", "value": "two"}]},
        {"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}]}]), "llava")
    assert len(llava) == 1 and llava.skip_reasons == {"no picture (text only)": 1}  # one example per conversation
    assert llava[0]["question"] == "what color is the background?" and llava[0]["answer"] == "gray"
    assert llava[0]["turns"] == [("what color is the background?", "gray"), ("how many objects are there?", "two")]
    tok = tiny_tokenizer()
    seq = build_sequence(tok, instruct_segments(llava[0], {"image": torch.zeros(341, 64)}))
    assert tok.decode(seq["input_ids"][seq["text_target"]]) == "gray </s> two </s>"  # the loss on both answers
    said = lambda text: tok.decode(tok(text, add_special_tokens=False)["input_ids"])
    assert said(f"gray </s> {CHAT[0]} how many objects are there? {CHAT[1]} two") in tok.decode(seq["input_ids"])
    assert set(InstructData("understanding", 1)[0]) <= set(llava[0]) and llava[0]["image"].shape == (3, 64, 64)
    # the stage's own collate takes them
    enc, tok = tiny_encoder(tiny_clip()), tiny_tokenizer()
    for ds in (edit, cond, llava):
        batch = instruct_collate(enc, tok)([ds[0]])
        assert batch["input_ids"].shape[0] == 1


@pytest.mark.parametrize("kind, line, message", [
    ("edit", '{"source": "a.png", "target": "b.png"}', "needs 'instruction'"),
    ("edit", '{"source": "a.png", "instruction": "x", "target": "b.png"', "not valid JSON"),
    ("edit", '[1, 2]', "expected a JSON object"),
    ("edit", '{"source": "a.png", "instruction": "", "target": "b.png"}', "'instruction' must be a non-empty string"),
    ("conditional", '{"condition": "a.png", "task": "depth", "caption": "x", "target": "b.png"}', "unknown task 'depth'"),
    ("llava", '{"image": "a.png", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "?"}]}', "turn 0 must be"),
    ("llava", '{"image": "a.png", "conversations": [{"from": "human", "value": "?"}]}', "in pairs"),
    ("grit", '{"image": "a.png", "caption": "a cat", "boxes": [{"span": [2, 5], "box": [0.1, 0.2, 1.5, 0.9]}]}', "normalised to"),
    ("grit", '{"image": "a.png", "caption": "a cat", "boxes": [{"span": [2, 9], "box": [0.1, 0.2, 0.5, 0.9]}]}', "within the caption"),
    ("grit", '{"image": "a.png", "caption": "a cat"}', "needs 'boxes'"),
])
def test_manifest_errors_name_the_file_and_line(tmp_path, kind, line, message):
    good = {"edit": '{"source": "a.png", "instruction": "x", "target": "b.png"}',
            "conditional": '{"condition": "a.png", "task": "canny", "caption": "x", "target": "b.png"}',
            "llava": '{"image": "a.png", "conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": "!"}]}',
            "grit": '{"image": "a.png", "caption": "a cat", "boxes": [{"span": [2, 5], "box": [0.1, 0.2, 0.5, 0.9]}]}'}[kind]
    path = _manifest(tmp_path / "m.jsonl", [good, "", line])
    with pytest.raises(ManifestError, match=f"m.jsonl:3: .*{message}"):
        read_manifest(path, kind)
    with pytest.raises(ManifestError, match="no usable lines"):  # every picture missing
        read_manifest(_manifest(tmp_path / "ok.jsonl", [good]), kind)


def test_grounding_boxes(tmp_path):
    from puma_nb.mllm import tiny_tokenizer
    from puma_nb.pretrain import pretrain_sequence
    assert position_bins([0.25, 0.5, 0.75, 1.0]) == [56, 112, 168, 223]
    assert position_bins([0, 0, 0.999, 1.2]) == [0, 0, 223, 223]
    assert position_bins([16, 8, 48, 24], width=64, height=32) == [56, 56, 168, 168]
    for o in (tw.Obj("circle", "red", "large", "top left"), tw.Obj("triangle", "blue", "small", "bottom right")):
        assert position_bins(tw.bbox(o), 64, 64) == position_bins([c / 64 for c in tw.bbox(o)]) == tw.to_bins(tw.bbox(o))
    _write_pictures(tmp_path, {"a.png": torch.rand(3, 80, 120)})
    caption = "a red circle next to a blue square"
    assert caption[2:12] == "red circle" and caption[23:34] == "blue square"
    ours = {"image": "a.png", "caption": caption, "boxes": [{"span": [2, 12], "box": [0.25, 0.5, 0.75, 1.0]}, {"span": [23, 34], "box": [0, 0, 0.5, 0.5]}]}
    grit = {"image": "a.png", "caption": caption, "ref_exps": [[2, 12, 0.25, 0.5, 0.75, 1.0, 0.8], [23, 34, 0, 0, 0.5, 0.5, 0.7]]}
    for line in (ours, grit):
        ds = read_manifest(_manifest(tmp_path / "g.jsonl", [line]), "grit")
        assert [ds[k]["phrase"] for k in range(2)] == ["red circle", "blue square"] and ds[1]["bins"] == [0, 0, 112, 112]
        assert ds[0]["source"] == "grounding" and ds[0]["image"].shape == (3, 64, 64)
    tok = tiny_tokenizer()
    seq = pretrain_sequence(tok, ds[0], torch.zeros(341, 64))
    assert tok.decode(seq["input_ids"][seq["text_target"]]) == "<p56> <p112> <p168> <p223> </s>"


def test_cached_features_give_the_same_batches(tmp_path):
    from puma_nb.instruct import InstructData, instruct_collate
    from puma_nb.mllm import tiny_tokenizer
    from puma_nb.pretrain import PretrainMix, pretrain_collate
    from puma_nb.pyramid import tiny_clip, tiny_encoder
    torch.manual_seed(0)
    enc, tok = tiny_encoder(tiny_clip()), tiny_tokenizer()
    cases = [(PretrainMix(12), pretrain_collate), (InstructData("edit", 5), instruct_collate), (InstructData("conditional", 5), instruct_collate)]
    for i, (ds, collate) in enumerate(cases):
        items = [ds[k] for k in range(len(ds))]
        extract_features(enc, items, tmp_path / f"f{i}", per_shard=4, batch_size=3)
        cached = list(ShardStream(tmp_path / f"f{i}", FeatureItem(), shuffle_shards=False, shuffle_buffer=0, epochs=1))
        assert [it["caption"] for it in cached] == [it["caption"] for it in items]
        stand_in = CachedFeatures.from_folder(tmp_path / f"f{i}")
        assert stand_in.width == enc.width and stand_in.grid == 16 and cached[0]["image"].dtype == torch.float16
        a, b = collate(enc, tok)(items), collate(stand_in, tok)(cached)
        assert a.keys() == b.keys()
        for k in a:
            if k == "features": torch.testing.assert_close(b[k], a[k], atol=2e-3 * float(a[k].abs().max()), rtol=0)
            elif torch.is_tensor(a[k]): assert torch.equal(a[k], b[k]), k
            else: assert a[k] == b[k], k
    with pytest.raises(ValueError, match="these are pictures"):
        stand_in(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 256, 64\)"):
        stand_in(torch.rand(2, 255, 64))


def test_fit_resumes_a_stream_exactly(bad_shards, tmp_path):
    from torch import nn
    from puma_nb.training import TrainConfig, fit
    from puma_nb.checkpoints import read_metrics

    def loss_fn(model, batch): return ((model(batch["image"].mean((2, 3))) - 0.5) ** 2).mean()

    def run(out, **kw):
        torch.manual_seed(0)
        cfg = TrainConfig(steps=10, batch_size=8, lr=1e-2, out_dir=str(tmp_path / out), log_every=1, progress=False, **kw)
        fit(nn.Linear(3, 1), loss_fn, ShardStream(bad_shards, PairItem(16), shuffle_buffer=8), cfg, collate_fn=tw.collate)
        return read_metrics(tmp_path / out)

    straight = run("a")
    run("b", stop_after=4)
    resumed = run("b")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert [r["skipped"] for r in resumed] == [r["skipped"] for r in straight] and straight[-1]["skipped"] >= 4


def test_a_decoders_pair_item_feeds_the_encoder_the_mllms_picture(tmp_path):
    "PairItem(512-like side, clip_size=224-like side): `clip_image` equals the MLLM's item at the encoder's side, pixel for pixel."
    import io
    from PIL import Image
    from puma_nb.data import PairItem, decode_image
    rng = np.random.default_rng(0)
    buf = io.BytesIO(); Image.fromarray((rng.random((120, 90, 3)) * 255).astype(np.uint8)).save(buf, "JPEG"); jpg = buf.getvalue()
    sample = {"__key__": "k", "jpg": jpg, "txt": b"a cat"}
    dec, mllm = PairItem(96, clip_size=40)(sample), PairItem(40)(sample)
    assert dec["image"].shape == (3, 96, 96) and torch.equal(dec["clip_image"], mllm["image"])
    want = Image.open(io.BytesIO(jpg)).convert("RGB").crop((0, 15, 90, 105)).resize((40, 40), Image.BILINEAR)  # crop, PIL bilinear
    assert torch.equal(mllm["image"], torch.from_numpy(np.array(want)).permute(2, 0, 1).float() / 255)
    assert torch.equal(decode_image(jpg, 40), mllm["image"])
