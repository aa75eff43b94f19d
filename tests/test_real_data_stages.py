"The stages on real-data layouts (shards, manifests) written here: pretraining's mixture, a decoder, an edit model; exact resume."
import json

import pytest
import torch

from _helpers import run_train as train
from puma_nb import toyworld as tw
from puma_nb.checkpoints import read_metrics
from puma_nb.data import encode_image, write_shards
from puma_nb.decoder import load_puma_decoder
from puma_nb.instruct import InstructData
from puma_nb.mllm import load_mllm
from puma_nb.pretrain import MixedStream, TextLines
from puma_nb.pyramid import TinyClipConfig, save_clip, tiny_clip

TINY_MLLM = ["model.hidden_size=64", "model.intermediate_size=128", "model.layers=1", "model.heads=2", "model.kv_heads=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "A tiny CLIP, 4 shards of pairs (one picture corrupt), a GRIT manifest, a text file, an edit manifest."
    d = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    save_clip(tiny_clip(), TinyClipConfig(), d / "clip")
    world = tw.ShapesWorld("train", 40, "grounding", seed=0)
    items = [world[i] for i in range(40)]
    write_shards(items, d / "pairs", per_shard=10, corrupt=[5])
    (d / "pics").mkdir()
    grit, edits = [], []
    for i, it in enumerate(items[:8]):
        (d / "pics" / f"{i}.png").write_bytes(encode_image(it["image"], "png"))
        grit.append({"image": f"pics/{i}.png", "caption": it["phrase"],  # the phrase grounds the whole caption
                     "boxes": [{"span": [0, len(it["phrase"])], "box": [b / 224 for b in it["bins"]]}]})
    for i in range(6):
        e = InstructData("edit", 6, "train", 0)[i]
        for k in ("source", "image"): (d / "pics" / f"e{i}_{k}.png").write_bytes(encode_image(e[k], "png"))
        edits.append({"source": f"pics/e{i}_source.png", "instruction": e["instruction"], "target": f"pics/e{i}_image.png", "kind": e["kind"]})
    (d / "grit.jsonl").write_text("".join(json.dumps(g) + "\n" for g in grit))
    (d / "edit.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edits))
    (d / "text.jsonl").write_text("".join(json.dumps({"text": items[i]["caption"]}) + "\n" for i in range(10)))
    return d


def test_real_mixture_draws_every_source_by_its_weight(data):
    from puma_nb.data import PairItem, ShardStream
    from puma_nb.manifests import read_manifest
    pairs = ShardStream(str(data / "pairs"), PairItem(64), shuffle_buffer=4)
    mix = MixedStream(pairs, {"grounding": read_manifest(data / "grit.jsonl", "grit"), "text": TextLines(data / "text.jsonl")},
                      {"pairs": 0.5, "grounding": 0.25, "text": 0.25})
    mix.set_position(rank=0, world_size=1, micro_batch=4, batches=0)
    got = [it["source"] for _, it in zip(range(400), iter(mix))]
    share = {s: got.count(s) / len(got) for s in ("t2i", "i2t", "grounding", "text")}
    assert abs(share["grounding"] - 0.25) < 0.07 and abs(share["text"] - 0.25) < 0.07 and abs(share["t2i"] + share["i2t"] - 0.5) < 0.07
    mix.set_position(rank=0, world_size=1, micro_batch=4, batches=5)  # resume after 5 micro-batches of 4
    again = [it["source"] for _, it in zip(range(40), iter(mix))]
    assert again == got[20:60]


def test_pretraining_on_shards_grounding_and_text_resumes_exactly(data, tmp_path):
    common = [f"data.encoder={data / 'clip'}", f"data.shards={data / 'pairs'}", f"data.grounding={data / 'grit.jsonl'}",
              f"data.text={data / 'text.jsonl'}", "data.shuffle_buffer=8", "data.max_bad_rate=0.2", "train.steps=6",
              "train.warmup_steps=1", "train.batch_size=8", "train.micro_batch_size=4", "train.log_every=1",
              "train.progress=false", "train.precision=fp32", *TINY_MLLM]
    train("toy/pretrain.yaml", *common, f"train.out_dir={tmp_path / 'a'}")
    train("toy/pretrain.yaml", *common, f"train.out_dir={tmp_path / 'b'}", "train.stop_after=3")
    out = train("toy/pretrain.yaml", *common, f"train.out_dir={tmp_path / 'b'}")
    assert "resuming from step 3" in out
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and len(a) == 6
    assert a[-1]["skipped"] == b[-1]["skipped"] >= 1  # the corrupt picture, skipped and counted
    (ma, _, _), (mb, _, _) = load_mllm(tmp_path / "a" / "model"), load_mllm(tmp_path / "b" / "model")
    assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))


def test_decoder_on_shards_and_edit_model_on_a_manifest(data, tmp_path):
    train("toy/decoder_f0.yaml", "scale=3", "export_dir=", f"data.encoder={data / 'clip'}", f"data.shards={data / 'pairs'}", "data.shuffle_buffer=8",
          "data.max_bad_rate=0.2", "train.steps=2", "train.warmup_steps=1", "train.batch_size=4", "train.progress=false",
          f"train.out_dir={tmp_path / 'd3'}")
    assert load_puma_decoder(tmp_path / "d3" / "unet_4").n_tokens == 4
    train("toy/pretrain.yaml", f"data.encoder={data / 'clip'}", "data.n_train=50", "train.steps=1", "train.warmup_steps=1",
          "train.batch_size=2", "train.progress=false", f"train.out_dir={tmp_path / 'pre'}", *TINY_MLLM)
    train("toy/t2i.yaml", "task=edit", f"init={tmp_path / 'pre' / 'model'}", f"data.encoder={data / 'clip'}",
          f"data.manifest={data / 'edit.jsonl'}", "data.image_size=64", "train.steps=2", "train.warmup_steps=1", "train.batch_size=2",
          "train.progress=false", f"train.out_dir={tmp_path / 'edit'}")
    rows = read_metrics(tmp_path / "edit")
    assert rows[-1]["step"] == 2 and rows[-1]["mse_f0"] > 0  # the edited picture's features were regressed
    with pytest.raises(AssertionError, match="data.shards feeds the t2i task"):
        train("toy/t2i.yaml", "task=edit", f"init={tmp_path / 'pre' / 'model'}", f"data.encoder={data / 'clip'}",
              f"data.shards={data / 'pairs'}", "train.steps=1", "train.warmup_steps=1", f"train.out_dir={tmp_path / 'bad'}")
