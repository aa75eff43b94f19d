"The MLLM: tokenizer, sequences and their targets, Eq. 2, cached generation, save/load, the 8B shape on meta."
import pytest
import torch
from transformers import LlamaForCausalLM

from puma_nb.mllm import (N_FEATURES, SCALE_ORDER, TOKENIZER_DIR, Image, MLLMConfig, PumaLM, Text, build_mllm, build_prompt,
                          build_sequence, build_tokenizer, collate_sequences, flatten_pyramid, generate_features, generate_text,
                          image_position_ids, image_tokens, llama_config, load_mllm, save_mllm, scale_index, select_scales,
                          shapesworld_words, tiny_tokenizer, unflatten_pyramid)
from puma_nb.mllm_loss import ALPHA, CHANGED, change_weights, puma_loss, scale_shares, source_places
from puma_nb.pyramid import SCALES
from puma_nb import toyworld as tw


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def pyr(C=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, C, generator=g) for n in SCALES]


def test_shipped_tokenizer_is_the_built_one_and_covers_every_text(tok):
    assert (TOKENIZER_DIR / "tokenizer.json").exists(), "data/shapesworld_tokenizer is missing"
    built = build_tokenizer()
    assert tok.get_vocab() == built.get_vocab()
    for task in tw.TASKS:
        ds = tw.ShapesWorld("test", 50, task)
        for i in range(50):
            x = ds[i]
            for k in ("caption", "instruction", "question", "answer", "phrase"):
                if k in x:
                    ids = tok(x[k], add_special_tokens=False)["input_ids"]
                    assert tok.unk_token_id not in ids, (task, k, x[k])
                    assert tok.decode(ids).replace(" ?", "?").replace(" '", "'").replace("' ", "'") == x[k].lower(), (task, k)
    assert {"<s>", "</s>", "[IMG]", "[/IMG]", "<p0>", "<p223>"} <= set(tok.get_vocab())


def test_pyramid_flattening_is_coarse_to_fine():
    f = pyr()
    flat = flatten_pyramid(f)
    assert flat.shape == (N_FEATURES, 64) and SCALE_ORDER == (4, 3, 2, 1, 0)
    assert torch.equal(flat[0], f[4][0]) and torch.equal(flat[1:5], f[3]) and torch.equal(flat[-256:], f[0])
    assert all(torch.equal(a, b) for a, b in zip(unflatten_pyramid(flat), f))


def test_sequence_targets_and_the_shift(tok):
    seq = build_sequence(tok, [Text("a red circle"), Image(flatten_pyramid(pyr()), target=True)])
    ids = seq["input_ids"]
    img, end = tok.convert_tokens_to_ids("[IMG]"), tok.convert_tokens_to_ids("[/IMG]")
    p = ids.tolist().index(img)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and ids[p + 342] == end
    assert seq["text_target"].nonzero().flatten().tolist() == [p, p + 342, len(ids) - 1]
    assert seq["feature_target"].all() and len(seq["features"]) == N_FEATURES
    # the shift: with a model whose hidden state is the *next* input's embedding, Eq. 2 is zero exactly when
    # h_{p-1} predicts the feature at p
    torch.manual_seed(0)  # a fixed draw: an ill-conditioned random input_proj leaves its pseudo-inverse above the 1e-8 below
    m = build_mllm(MLLMConfig(hidden_size=64, intermediate_size=128, layers=1, heads=2, kv_heads=2), tok)
    b = collate_sequences([seq], tok.pad_token_id)
    emb = m.embed(b["input_ids"], b["features"])
    m.forward = lambda ids, feats, mask=None, pos=None, cache=None, use_cache=False, feature_index=None: (torch.roll(emb, -1, 1), None)
    with torch.no_grad():
        m.output_proj.weight.copy_(torch.linalg.pinv(m.input_proj.weight)); m.output_proj.bias.copy_(-m.output_proj.weight @ m.input_proj.bias)
    _, parts = puma_loss(m, b)
    assert all(float(parts[f"mse_f{i}"]) < 1e-8 for i in range(5))


def test_prompt_only_images_and_understanding_targets(tok):
    seq = build_sequence(tok, [Image(flatten_pyramid(pyr())), Text("what color is the background?"), Text("white", target=True)])
    assert not seq["feature_target"].any() and seq["text_target"].sum() == 2  # "white" and </s>


def test_eq2_weights_and_normalisation(tok):
    assert ALPHA == (1.0, 8.0, 64.0, 512.0, 1024.0)
    s = scale_shares()
    assert abs(sum(s) - 1) < 1e-9 and abs(s[4] - 1024 / 4864) < 1e-9 and abs(s[0] - 256 / 4864) < 1e-9
    torch.manual_seed(0)
    m = build_mllm(MLLMConfig(hidden_size=64, intermediate_size=128, layers=1, heads=2, kv_heads=2), tok)
    b = collate_sequences([build_sequence(tok, [Text("a red circle"), Image(flatten_pyramid(pyr(seed=s)), target=True)]) for s in (0, 1)],
                          tok.pad_token_id)
    loss, parts = puma_loss(m, b)
    mse = [float(parts[f"mse_f{i}"]) for i in range(5)]
    expected = 0.02 * float(parts["ce"]) + sum(a * n * e for a, n, e in zip(ALPHA, SCALES, mse)) / 4864
    assert abs(float(loss) - expected) < 1e-4 * abs(expected)
    raw, _ = puma_loss(m, b, normalize="none")  # Eq. 2 as written: sums over tokens and channels, per image
    assert abs(float(raw) - (0.02 * float(parts["ce"]) + 64 * sum(a * n * e for a, n, e in zip(ALPHA, SCALES, mse)))) < 1e-3 * float(raw)
    loss2, _ = puma_loss(m, b, alpha=(0, 0, 0, 0, 1.0))
    assert abs(float(loss2) - (0.02 * float(parts["ce"]) + mse[4])) < 1e-4


@pytest.mark.parametrize("image_pos,image_stride,parent_skip",
                         [(False, 0, False), (True, 0, False), (False, 400, False), (True, 400, True)])
def test_cached_generation_equals_recomputing_the_prefix(tok, image_pos, image_stride, parent_skip):
    torch.manual_seed(0)
    m = build_mllm(MLLMConfig(image_pos=image_pos, image_stride=image_stride, parent_skip=parent_skip), tok).eval()
    if image_pos: torch.nn.init.normal_(m.image_pos.weight)  # zero at init: give each place its own vector, so the test can fail
    prompts = [build_prompt(tok, [Text("a large red circle at the top left on a white background")], open_image=True),
               build_prompt(tok, [Text("a small cyan triangle at the center and a large green square at the left on a black background")], open_image=True)]
    a = generate_features(m, prompts, tok.pad_token_id, scale=1)
    b = generate_features(m, prompts, tok.pad_token_id, scale=1, use_cache=False)
    assert a.shape == (2, 85, 64) and torch.allclose(a, b, atol=1e-4)
    # a left-padded prompt generates what it generates alone
    alone = generate_features(m, prompts[:1], tok.pad_token_id, scale=2)
    assert torch.allclose(alone, a[:1, :21], atol=1e-4)
    # an editing prompt (an image in the prompt) too
    ep = [build_prompt(tok, [Image(flatten_pyramid(pyr(seed=s))), Text(t)], open_image=True)
          for s, t in ((0, "remove the red circle"), (1, "change the color of the cyan circle to green"))]
    assert torch.allclose(generate_features(m, ep, tok.pad_token_id, scale=3), generate_features(m, ep, tok.pad_token_id, scale=3, use_cache=False), atol=1e-4)
    q = [build_prompt(tok, [Image(flatten_pyramid(pyr(seed=s))), Text("what shape is the red object?")]) for s in (0, 1)]
    assert generate_text(m, tok, q, max_new_tokens=6) == generate_text(m, tok, q, max_new_tokens=6, use_cache=False)
    g = lambda: torch.Generator().manual_seed(3)
    assert generate_text(m, tok, q, 6, temperature=1.0, top_k=5, generator=g()) == generate_text(m, tok, q, 6, temperature=1.0, top_k=5, generator=g())


def test_parent_skip_generates_what_the_loss_predicts(tok, tmp_path):
    "The loss and generation read the same parents: teacher-forced on a generated picture, the predictions are that picture."
    torch.manual_seed(0)
    cfg = MLLMConfig(hidden_size=64, intermediate_size=128, layers=2, heads=2, kv_heads=2, parent_skip=True)
    m = build_mllm(cfg, tok).eval()
    words = ["a large red circle at the top left on a white background", "a small cyan triangle at the center on a black background"]
    gen = generate_features(m, [build_prompt(tok, [Text(w)], open_image=True) for w in words], tok.pad_token_id)
    assert gen.shape == (2, 341, 64)
    b = collate_sequences([build_sequence(tok, [Text(w), Image(g, target=True)]) for w, g in zip(words, gen)], tok.pad_token_id)
    seen = {}
    orig = m.predict
    m.predict = lambda h, parents: seen.setdefault("pred", orig(h, parents))
    with torch.no_grad(): _, parts = puma_loss(m, b)
    del m.predict
    assert torch.allclose(seen["pred"].view(2, 341, 64), gen, atol=1e-4) and all(float(parts[f"mse_f{i}"]) < 1e-7 for i in range(5))
    # the skip is the parent itself: with the head at zero, every token is its f_4 ancestor's copy
    torch.nn.init.zeros_(m.output_proj.weight); torch.nn.init.constant_(m.output_proj.bias, 0.5)
    flat = generate_features(m, [build_prompt(tok, [Text(words[0])], open_image=True)], tok.pad_token_id)[0]
    assert torch.allclose(flat[-256:], torch.full((256, 64), 2.5))  # f_0: f_4 = 0.5, each finer scale adds 0.5
    save_mllm(m, tok, cfg, tmp_path / "m")
    m2, _, cfg2 = load_mllm(tmp_path / "m")
    assert cfg2.parent_skip and m2.parent_skip and not build_mllm(MLLMConfig(), tok).parent_skip


def test_source_places_finds_the_whole_picture_before():
    "change_weights compares a target token with the token at its place in the picture just before it, when that is a whole one."
    idx = torch.cat([scale_index((4, 3, 2, 1)), scale_index((0,)), torch.arange(341)])  # two short pictures of 85 + 256 tokens, then a whole one
    rows, pos = torch.zeros(len(idx), dtype=torch.long), torch.cat([torch.arange(85), torch.arange(256) + 90, torch.arange(341) + 400])
    assert (source_places(idx, rows, pos) == -1).all()
    pos2 = torch.cat([torch.arange(341), torch.arange(341) + 400])
    idx2 = torch.cat([torch.arange(341)] * 2)
    assert torch.equal(source_places(idx2, rows[:682] * 0, pos2)[341:], torch.arange(341))
    assert (source_places(idx2, torch.cat([torch.zeros(341), torch.ones(341)]).long(), pos2) == -1).all()  # another sequence's picture


def test_save_and_load(tok, tmp_path):
    torch.manual_seed(0)
    cfg = MLLMConfig(hidden_size=64, intermediate_size=128, layers=2, heads=2, kv_heads=1)
    m = build_mllm(cfg, tok).eval()
    save_mllm(m, tok, cfg, tmp_path / "m")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    m2, tok2, cfg2 = load_mllm(tmp_path / "m")
    assert cfg2 == cfg and tok2.get_vocab() == tok.get_vocab()
    import json
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**meta, "puma": {**meta["puma"], "source_skip": False}}))
    assert load_mllm(tmp_path / "m")[2] == cfg  # a folder saved with the removed `source_skip` off
    (tmp_path / "m" / "config.json").write_text(json.dumps({**meta, "puma": {**meta["puma"], "source_skip": True}}))
    with pytest.raises(Exception, match="source_skip"):
        load_mllm(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    p = [build_prompt(tok, [Text("a red circle")], open_image=True)]
    assert torch.equal(generate_features(m, p, tok.pad_token_id, 3), generate_features(m2.eval(), p, tok.pad_token_id, 3))
    with pytest.raises(FileNotFoundError, match="not an MLLM folder"):
        load_mllm(tmp_path / "nothing")


def test_meta_builds_have_the_real_shapes(tok, tmp_path):
    # FSDP ranks > 0 build the model on meta (no memory, no weights read); rank 0 sends the weights (`place_model`)
    cfg = MLLMConfig(hidden_size=64, intermediate_size=128, layers=2, heads=2, kv_heads=1, image_pos=True)
    m = build_mllm(cfg, tok)
    save_mllm(m, tok, cfg, tmp_path / "m")
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    for meta in (build_mllm(cfg, tok, on_meta=True), load_mllm(tmp_path / "m", on_meta=True)[0]):
        assert all(p.is_meta for p in meta.parameters()) and {k: v.shape for k, v in meta.state_dict().items()} == shapes


def test_image_pos_reads_each_feature_at_its_place(tok, tmp_path):
    torch.manual_seed(0)
    cfg = MLLMConfig(hidden_size=64, intermediate_size=128, layers=2, heads=2, kv_heads=1, image_pos=True)
    m = build_mllm(cfg, tok).eval()
    flat = flatten_pyramid(pyr(seed=0))
    seq = build_sequence(tok, [Image(flat), Text("a red circle", target=True)])
    assert torch.equal(seq["feature_index"], torch.arange(341))
    only = build_sequence(tok, [Image(select_scales(flat, (4, 0)), scales=(4, 0))])  # Table 5's inputs keep their places
    assert torch.equal(only["feature_index"], torch.cat([torch.tensor([0]), torch.arange(85, 341)]))
    b = collate_sequences([seq], tok.pad_token_id)
    plain = m.embed(b["input_ids"], b["features"], b["feature_index"])
    assert torch.equal(plain, m.embed(b["input_ids"], b["features"], b["feature_index"].flip(0)))  # zero-initialised: PUMA's projector
    torch.nn.init.normal_(m.image_pos.weight)
    e = m.embed(b["input_ids"], b["features"], b["feature_index"])
    feat = b["input_ids"][0] == m.feat_token_id
    assert torch.allclose(e[0, feat], plain[0, feat] + m.image_pos.weight, atol=1e-6) and torch.equal(e[0, ~feat], plain[0, ~feat])
    with pytest.raises(ValueError, match="feature_index"):
        m.embed(b["input_ids"], b["features"])
    save_mllm(m, tok, cfg, tmp_path / "m")
    m2, _, cfg2 = load_mllm(tmp_path / "m")
    assert cfg2.image_pos and torch.equal(m2.image_pos.weight, m.image_pos.weight)


def edit_batch(tok, instructions, seed=0):
    seqs = [build_sequence(tok, [Image(flatten_pyramid(pyr(seed=seed + k))), Text(t), Image(flatten_pyramid(pyr(seed=9)), target=True)])
            for k, t in enumerate(instructions)]
    return collate_sequences(seqs, tok.pad_token_id)


def test_change_weight_weighs_the_tokens_an_edit_changes(tok):
    "Within each scale, a target token unlike its source's weighs change_weight kept ones; each scale keeps its total weight."
    torch.manual_seed(0)
    src = pyr(seed=3)
    tgt = [f.clone() for f in src]
    tgt[0][:10] += 3.0  # ten f0 tokens changed (far above CHANGED), and one f1 token a little (below it)
    tgt[1][5] += 0.01
    b = collate_sequences([build_sequence(tok, [Image(flatten_pyramid(src)), Text("make the red circle blue"), Image(flatten_pyramid(tgt), target=True)])],
                          tok.pad_token_id)
    m = build_mllm(MLLMConfig(hidden_size=64, intermediate_size=128, layers=1, heads=2, kv_heads=2), tok).eval()
    fb, fp = (b["input_ids"] == m.feat_token_id).nonzero(as_tuple=True)
    w = change_weights(b, fb, fp, 4.0)
    k = b["feature_index"][b["feature_target"]]  # each target token's place in the 341
    f0_places = torch.arange(SCALES[0]) + N_FEATURES - SCALES[0]  # f0 is flattened last
    assert torch.equal(w, torch.where(torch.isin(k, f0_places[:10]), 4.0, 1.0))
    assert torch.equal(change_weights(b, fb, fp, 1.0), torch.ones_like(w))
    t2i = collate_sequences([build_sequence(tok, [Text("a red circle"), Image(flatten_pyramid(tgt), target=True)])], tok.pad_token_id)
    tb, tq = (t2i["input_ids"] == m.feat_token_id).nonzero(as_tuple=True)
    assert torch.equal(change_weights(t2i, tb, tq, 4.0), torch.ones(N_FEATURES))  # no source picture: nothing is a change
    with torch.no_grad():
        plain, pp = puma_loss(m, b)
        same, ps = puma_loss(m, b, change_weight=1.0)
        weighted, pw = puma_loss(m, b, change_weight=4.0)
        h, _ = m(b["input_ids"], b["features"])
        keep = b["feature_target"]
        err = ((m.predict(h[fb[keep], fp[keep] - 1]) - b["features"][keep]) ** 2).mean(-1)
    assert torch.equal(plain, same)
    for i in (1, 2, 3, 4): assert torch.allclose(pw[f"mse_f{i}"], pp[f"mse_f{i}"])  # no changed tokens there
    e0, w0 = err[torch.isin(k, f0_places)], w[torch.isin(k, f0_places)]
    assert torch.allclose(pw["mse_f0"], (w0 * e0).sum() / w0.sum(), rtol=1e-4)  # the weighted mean of f0's errors
    assert torch.allclose(pp["mse_f0"], e0.mean(), rtol=1e-4)
    assert not torch.allclose(weighted, plain)
    with pytest.raises(Exception, match="change_weight"):
        from puma_nb.mllm_loss import LossConfig
        LossConfig(change_weight=0).validate()


def test_image_stride_puts_every_image_at_the_same_distance(tok):
    img, end = image_tokens(tok)
    b = edit_batch(tok, ["remove the red circle", "change the color of the cyan circle to green"])
    ids = b["input_ids"]
    assert torch.equal(image_position_ids(ids, (img, end), 0), torch.arange(ids.shape[1]).expand_as(ids))
    pos = image_position_ids(ids, (img, end), 400)
    for r in range(2):
        opens, closes = (ids[r] == img).nonzero()[:, 0], (ids[r] == end).nonzero()[:, 0]
        assert pos[r, opens[1]] - pos[r, opens[0]] == 400  # whatever the instruction's length
        assert torch.equal(pos[r, :closes[0] + 1], torch.arange(closes[0] + 1))  # the source image as before
        words = slice(int(closes[0]) + 1, int(opens[1]) + 1)  # the instruction, then [IMG]: consecutive, the gap before them
        assert torch.equal(pos[r, words].diff(), torch.ones(words.stop - words.start - 1, dtype=torch.long))
        assert pos[r, words.start] - pos[r, closes[0]] > 1
    # left padding: each row counts from its first real token
    padded = torch.cat([torch.full((1, 3), tok.pad_token_id), ids[:1]], 1)
    mask = (torch.arange(padded.shape[1]) >= 3).long()[None]
    assert torch.equal(image_position_ids(padded, (img, end), 400, mask)[0, 3:], pos[0])
    with pytest.raises(ValueError, match="more than image_stride"):
        image_position_ids(ids, (img, end), 350)


def test_image_stride_keeps_the_target_reading_the_source(tok, tmp_path):
    # transformers takes a jump in position_ids without a mask for a packed row and masks attention across the
    # jump; the target image must still see the source through it
    torch.manual_seed(0)
    cfg = MLLMConfig(hidden_size=64, intermediate_size=128, layers=2, heads=2, kv_heads=2, image_stride=400)
    m = build_mllm(cfg, tok).eval()
    b, b2 = edit_batch(tok, ["remove the red circle"]), edit_batch(tok, ["remove the red circle"], seed=5)  # another source
    ids = b["input_ids"]
    target = slice(int((ids[0] == image_tokens(tok)[0]).nonzero()[1, 0]), None)
    h, _ = m(ids, b["features"])
    assert not torch.allclose(h[0, target], m(ids, b2["features"])[0][0, target], atol=1e-3)
    h_explicit, _ = m(ids, b["features"], torch.ones_like(ids), m.position_ids(ids))
    assert torch.allclose(h, h_explicit, atol=1e-5)
    h_plain, _ = m(ids, b["features"], torch.ones_like(ids), torch.arange(ids.shape[1])[None])
    assert not torch.allclose(h[0, target], h_plain[0, target], atol=1e-3)  # the stride does move the target
    save_mllm(m, tok, cfg, tmp_path / "m")
    m2, _, cfg2 = load_mllm(tmp_path / "m")
    assert cfg2.image_stride == 400 and torch.allclose(m2.eval()(ids, b["features"])[0], h, atol=1e-5)


def test_llama3_8b_shape_on_meta():
    with torch.device("meta"):
        lc = llama_config(MLLMConfig(kind="llama3_8b", feature_dim=1024), 128_256 + 227)
        lc._attn_implementation = "eager"
        m = PumaLM(LlamaForCausalLM(lc), 1024, 128_256 + 6)
        ids = torch.full((2, 365), 7); ids[:, 22:22 + 341] = 128_256 + 6
        h, _ = m(ids, torch.randn(2 * 341, 1024), attention_mask=torch.ones_like(ids))
    assert h.shape == (2, 365, 4096)
    assert lc.num_hidden_layers == 32 and lc.num_key_value_heads == 8 and lc.hidden_size == 4096
    assert 7.5e9 < sum(p.numel() for p in m.parameters()) < 8.5e9


def test_bad_configs_are_clear_errors():
    from puma_nb.config import ConfigError
    with pytest.raises(ConfigError, match="not divisible by heads"):
        MLLMConfig(hidden_size=250, heads=4).validate()
    with pytest.raises(ValueError, match="needs 341 features"):
        build_sequence(tiny_tokenizer(), [Image(torch.zeros(5, 64))])
    with pytest.raises(ConfigError, match="image_stride 300 is shorter than an image"):
        MLLMConfig(image_stride=300).validate()



def test_right_padded_batches_train_without_a_padding_mask(tok, monkeypatch):
    # collate_sequences pads on the right: the causal mask already keeps every real token from the pads, so puma_loss
    # drops the padding mask (attention keeps its fast path); the hidden states of real tokens are the masked ones
    torch.manual_seed(0)
    m = build_mllm(MLLMConfig(hidden_size=64, intermediate_size=128, layers=2, heads=2, kv_heads=2), tok)
    b = collate_sequences([build_sequence(tok, [Text(t), Image(flatten_pyramid(pyr(seed=s)), target=True)])
                           for s, t in ((0, "a red circle"), (1, "a small blue square at the top left on a white background"))],
                          tok.pad_token_id)
    am = b["attention_mask"]
    assert not am.all()  # the first row is padded
    real = am.bool()
    h_mask, _ = m(b["input_ids"], b["features"], am)
    h_none, _ = m(b["input_ids"], b["features"], None)
    assert torch.allclose(h_mask[real], h_none[real], atol=1e-5)
    masks = []
    forward = PumaLM.forward
    monkeypatch.setattr(PumaLM, "forward", lambda self, ids, f, mask=None, **kw: masks.append(mask) or forward(self, ids, f, mask, **kw))
    puma_loss(m, b)
    puma_loss(m, {**b, "attention_mask": am.flip(1)})  # left padding: the mask stays
    assert masks[0] is None and torch.equal(masks[1], am.flip(1))


def test_self_feed_reads_the_models_own_predictions(tok):
    "Scheduled sampling: fed every target token with enough passes, the model reads exactly what it generates, and Eq. 2 is the free-running error."
    from puma_nb.config import ConfigError
    from puma_nb.mllm_loss import LossConfig, self_feed_inputs
    torch.manual_seed(0)
    m = build_mllm(MLLMConfig(hidden_size=64, intermediate_size=128, layers=2, heads=2, kv_heads=2, image_pos=True, parent_skip=True), tok).eval()
    torch.nn.init.normal_(m.image_pos.weight)
    words = ["a large red circle at the top left on a white background", "a small cyan triangle at the center on a black background"]
    gen = generate_features(m, [build_prompt(tok, [Text(w)], open_image=True) for w in words], tok.pad_token_id)
    b = collate_sequences([build_sequence(tok, [Text(w), Image(flatten_pyramid(pyr(seed=s)), target=True)]) for s, w in enumerate(words)],
                          tok.pad_token_id)
    f = b["features"]
    assert torch.equal(self_feed_inputs(m, b, None, 0.0), f)
    every = self_feed_inputs(m, b, None, 1.0, passes=N_FEATURES).view(2, N_FEATURES, 64)
    assert torch.allclose(every, gen, atol=1e-4)
    five = self_feed_inputs(m, b, None, 1.0, passes=5).view(2, N_FEATURES, 64)  # pass k gets token k - 1 right: f_4 and f_3
    assert torch.allclose(five[:, :5], gen[:, :5], atol=1e-4) and not torch.allclose(five[:, 5:], gen[:, 5:], atol=1e-2)
    torch.manual_seed(1)
    half = self_feed_inputs(m, b, None, 0.5)
    kept = (half == f).all(-1).float().mean()
    assert 0.4 < float(kept) < 0.6, kept
    with torch.no_grad():
        plain, pp = puma_loss(m, b)
        off, po = puma_loss(m, b, self_feed=0.0)
        fed, pf = puma_loss(m, b, self_feed=1.0, self_feed_passes=N_FEATURES)
    assert torch.equal(plain, off)
    target = f.view(2, N_FEATURES, 64)
    free = {i: float(((gen - target) ** 2)[:, (scale_index([i]))].mean()) for i in range(5)}  # the free-running error per scale
    assert all(abs(float(pf[f"mse_f{i}"]) - free[i]) < 1e-4 * free[i] for i in range(5)), (pf, free)
    assert float(pf["mse_f0"]) > float(pp["mse_f0"])  # an untrained model drifts: its own inputs make f_0 worse
    # only the picture being generated is fed: an edit's source stays the encoder's
    e = collate_sequences([build_sequence(tok, [Image(flatten_pyramid(pyr(seed=2))), Text("remove the red circle"),
                                               Image(flatten_pyramid(pyr(seed=3)), target=True)])], tok.pad_token_id)
    x = self_feed_inputs(m, e, None, 1.0)
    assert torch.equal(x[~e["feature_target"]], e["features"][~e["feature_target"]]) and not torch.equal(x, e["features"])
    for bad in (dict(self_feed=1.5), dict(self_feed=-0.1), dict(self_feed_passes=0)):
        with pytest.raises(ConfigError): LossConfig(**bad).validate()
