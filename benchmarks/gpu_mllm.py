"""GPU benchmark (issue 6): one training step of PUMA's MLLM at the LLaMA-3-8B shape with PUMA's sequence length,
against a plain transformers Llama step of the same shape, in one run. Prints JSON (and writes it with --out).

A step is forward, backward, fused AdamW step and zero_grad, in bf16 (parameters, gradients and AdamW states all bf16:
no fp32 master weights, so that 8B fits). The sequence is a text-to-image one, as `t2i_collate` builds them:
`<s>` + caption words + `[IMG]` + 341 feature tokens + `[/IMG]` + `</s>` = 416 by default (71 caption words).
The batch is made once and reused (no data loading is timed).

Variants, each in a fresh model built with the same seed, timed one after the other (median of --steps after --warmup):
  plain                 transformers LlamaForCausalLM, input_ids, full-vocabulary logits and CE on every position (the baseline)
  ours_eager            PumaLM + puma_loss as puma_nb.mllm has them (logits only at the text targets, regression at the features)
  ours_compiled         the same, each decoder layer torch.compile'd (fused RMSNorm, RoPE, SiLU·mul, residuals)
  ours_compiled_static  the same, plus a loss with no host synchronisation (gather indices made at collate time, on
                        the CPU) whose tail is compiled in one graph: the change this benchmark proposes for puma_loss

On the lent GPU (about 2 to 3 minutes on an H100, compilation included), best through benchmarks/gpu_check.sh, which
first installs the wheels benchmarks/gpu_wheels.sh fetched (puma_nb needs transformers 5.24; the image has 5.17):
    python benchmarks/gpu_mllm.py --out $OUT/gpu_mllm.json
    python benchmarks/gpu_mllm.py --layers 32 --batch 8 --seq 416     # the full depth (needs ~100 GB: an H200)
On a CPU, to check the code paths in seconds:
    python benchmarks/gpu_mllm.py --tiny --no-compile --steps 2 --warmup 1

--layers auto: the full 32 layers where they fit (H200, 141 GB), else the most that fit with a margin (16 on an 80 GB
H100): same width, fewer layers; MFU per layer is what matters (the LM head and the optimizer weigh a little more).

Good numbers: the issue measured a plain eager transformers Llama-3-8B-shaped step at 45% MFU on an H200 (seq 416,
micro-batch 8, bf16, fused AdamW); our target on H100/H200 is MFU >= 50% for the MLLM step. MFU uses the PaLM
convention (see `flops_convention` in the JSON) and the dense bf16 peak (989 TFLOP/s for H100 SXM and H200).
"""
import argparse, sys, time

import _gpu  # first: it sets the allocator and offline environment before torch is imported
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from puma_nb.mllm import FEATURE_SCALE, LLAMA3_8B, MLLMConfig, N_FEATURES, POSITION_TOKENS, PumaLM, llama_config
from puma_nb.mllm_loss import ALPHA, puma_loss
from puma_nb.pyramid import SCALES

VARIANTS = ("plain", "ours_eager", "ours_compiled", "ours_compiled_static")
COMPILED = {"ours_compiled", "ours_compiled_static"}
MIN_LEFT = {"ours_compiled": 60, "ours_compiled_static": 30}  # seconds left of --max-seconds a variant needs to start (the second reuses the on-disk compile cache)
DESCRIPTIONS = {
    "plain": "transformers LlamaForCausalLM(input_ids, labels=input_ids): full-vocabulary logits, fp32 CE on every position",
    "ours_eager": "PumaLM + puma_loss as in puma_nb.mllm (eager)",
    "ours_compiled": "PumaLM + puma_loss, every decoder layer torch.compile'd (dynamic=False)",
    "ours_compiled_static": "ours_compiled + a sync-free loss (indices from the collate function) with its tail compiled in one graph"}
PUMA_VOCAB = LLAMA3_8B["vocab_size"] + 3 + len(POSITION_TOKENS)  # llama3_tokenizer(): + [IMG], [/IMG], <feat>, <p0>…<p223>
# token ids: <s>, </s> as LLaMA-3's; PUMA's added tokens right after LLaMA-3's vocabulary; captions from the ordinary words
FULL_IDS = dict(bos=128_000, eos=128_001, img=128_256, img_end=128_257, feat=128_258, words=(0, 128_000))
TINY_VOCAB = 512
TINY_IDS = dict(bos=2, eos=3, img=4, img_end=5, feat=6, words=(7, TINY_VOCAB))


def llama_shape(tiny: bool, layers: int) -> LlamaConfig:
    "The backbone config, as `build_mllm` makes it (`MLLMConfig(kind='llama3_8b')`), with `layers` decoder layers."
    if tiny: cfg = llama_config(MLLMConfig(hidden_size=64, layers=layers, heads=4, kv_heads=2, intermediate_size=176), TINY_VOCAB)
    else: cfg = llama_config(MLLMConfig(kind="llama3_8b"), PUMA_VOCAB)
    cfg.num_hidden_layers = layers
    return cfg


def layer_matmul_params(cfg: LlamaConfig) -> int:
    "Weights one decoder layer multiplies each token by: q, k, v, o and the gated MLP."
    d, hd = cfg.hidden_size, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return d * hd * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads) + 3 * d * cfg.intermediate_size


def train_flops(cfg: LlamaConfig, B: int, S: int, head_positions: int, feat_in: int = 0, feat_out: int = 0, C: int = 0) -> float:
    """Model FLOPs of one training step (PaLM convention: 3 × forward, matmuls only, attention not halved for causal):
    6·N_layers·T + 12·L·S·(heads·head_dim)·T + 6·d·V·(positions given logits) + 6·C·d·(feature tokens in + out)."""
    L, d, T = cfg.num_hidden_layers, cfg.hidden_size, B * S
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    fwd = 2 * L * layer_matmul_params(cfg) * T + 4 * L * S * cfg.num_attention_heads * hd * T
    fwd += 2 * d * cfg.vocab_size * head_positions + 2 * C * d * (feat_in + feat_out)
    return 3.0 * fwd


def estimate_bytes(cfg: LlamaConfig, layers: int, tokens: int) -> float:
    "A generous estimate of the plain step's peak memory (it holds the full-vocabulary logits): for choosing --layers auto."
    d, V, ffn = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    n = layers * (layer_matmul_params(cfg) + 2 * d) + 2 * V * d
    return 8 * n + layers * tokens * 2 * (16 * d + 4 * ffn) + 16 * tokens * V  # bf16 param+grad+2 states; activations; logits


def auto_layers(cfg: LlamaConfig, tokens: int, mem: int, margin: float = 0.75) -> int:
    for L in range(32, 4, -4):
        if estimate_bytes(cfg, L, tokens) <= margin * mem: return L
    return 4


def t2i_batch(B: int, S: int, C: int, ids: dict, seed: int = 0) -> dict:
    "A collated batch of text-to-image sequences as `build_sequence` makes them (caption not a target; [IMG], [/IMG], </s> and the features are)."
    n_cap = S - N_FEATURES - 4
    if n_cap < 1: raise SystemExit(f"--seq {S} is too short: a text-to-image sequence is <s> + caption + [IMG] + {N_FEATURES} features + [/IMG] + </s>")
    g = torch.Generator().manual_seed(seed)
    col = lambda v: torch.full((B, 1), v)
    input_ids = torch.cat([col(ids["bos"]), torch.randint(*ids["words"], (B, n_cap), generator=g), col(ids["img"]),
                           torch.full((B, N_FEATURES), ids["feat"]), col(ids["img_end"]), col(ids["eos"])], 1)
    text_target = torch.zeros(B, S, dtype=torch.bool)
    text_target[:, [1 + n_cap, S - 2, S - 1]] = True
    return {"input_ids": input_ids, "attention_mask": torch.ones(B, S, dtype=torch.long), "text_target": text_target,
            "features": torch.randn(B * N_FEATURES, C, generator=g), "feature_target": torch.ones(B * N_FEATURES, dtype=torch.bool),
            "feature_scale": FEATURE_SCALE.repeat(B)}


def static_targets(batch: dict, feat_id: int, alpha=ALPHA) -> dict:
    """What `puma_loss` finds on the device with nonzero() and boolean masks (each a host synchronisation and a graph break),
    computed once on the CPU, as a collate function would: flat gather indices and each feature token's weight; and
    no attention mask for a right-padded batch (see `right_padded`)."""
    ids = batch["input_ids"]
    S = ids.shape[1]
    tb, tp = batch["text_target"].nonzero(as_tuple=True)
    fb, fp = (ids == feat_id).nonzero(as_tuple=True)
    keep = batch["feature_target"]
    scale = batch["feature_scale"][keep]
    n_img = keep.sum().item() / N_FEATURES
    w = torch.tensor(alpha)[scale] / (n_img * sum(a * n for a, n in zip(alpha, SCALES)))
    return {"text_src": tb * S + tp - 1, "text_tgt": ids[tb, tp], "feat_src": (fb * S + fp - 1)[keep],
            "feat_tgt": batch["features"][keep], "feat_w": w, "feat_scale": scale,
            "scale_norm": torch.tensor([n_img * n for n in SCALES], dtype=torch.float),
            "mask": None if right_padded(batch["attention_mask"]) else batch["attention_mask"]}


def right_padded(mask: torch.Tensor) -> bool:
    """True when every row is real tokens then padding (what `collate_sequences` makes): under the causal mask no real
    token can see a pad then, so the padding mask changes nothing the loss reads, and without it SDPA can use flash."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def loss_tail(h, lm_head, output_proj, tg: dict, ce_weight: float = 0.02):
    "Eq. 2 from the last hidden states `h` (B, L, d), with static shapes only (the same value as `puma_loss`)."
    h = h.flatten(0, 1)
    ce = F.cross_entropy(lm_head(h[tg["text_src"]]).float(), tg["text_tgt"])
    err = ((output_proj(h[tg["feat_src"]]).float() - tg["feat_tgt"].float()) ** 2).mean(-1)
    mse = torch.zeros(len(SCALES), device=h.device).index_add_(0, tg["feat_scale"], err.detach()) / tg["scale_norm"]
    return ce_weight * ce + (tg["feat_w"] * err).sum(), ce.detach(), mse


def puma_loss_static(model: PumaLM, batch: dict, tg: dict, tail=loss_tail):
    h, _ = model(batch["input_ids"], batch["features"], tg["mask"])
    loss, ce, mse = tail(h, model.llm.lm_head, model.output_proj, tg)
    return loss, {"ce": ce, **{f"mse_f{i}": mse[i] for i in range(len(SCALES))}}


def to(d, dev):
    return {k: (v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}


def main(argv=None):
    t_start = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _gpu.common_args(ap)
    ap.add_argument("--layers", default="auto", help="decoder layers: a number, or auto (32 where they fit, else fewer)")
    ap.add_argument("--batch", type=int, default=0, help="micro-batch (default 8; tiny 2)")
    ap.add_argument("--seq", type=int, default=416, help="sequence length: <s> + caption + [IMG] + 341 + [/IMG] + </s>")
    ap.add_argument("--compile-backend", default="inductor", help="e.g. aot_eager to check tracing on a CPU")
    args = ap.parse_args(argv)
    dev = _gpu.setup(args)
    deadline = t_start + args.max_seconds
    B, S = args.batch or (2 if args.tiny else 8), args.seq
    ids, C = (TINY_IDS, 64) if args.tiny else (FULL_IDS, 1024)
    peak, peak_src = _gpu.peak_flops(dev, args.peak_tflops)
    auto = args.layers == "auto"
    if auto: layers = 2 if args.tiny else (auto_layers(llama_shape(False, 32), B * S, _gpu.total_memory(dev)) if dev.type == "cuda" else 32)
    else: layers = int(args.layers)

    cpu_batch = t2i_batch(B, S, C, ids, args.seed)
    batch, tg = to(cpu_batch, dev), to(static_targets(cpu_batch, ids["feat"]), dev)
    n_text, n_feat = int(cpu_batch["text_target"].sum()), int(cpu_batch["feature_target"].sum())
    notes = []
    result = {"benchmark": "gpu_mllm: PUMA's MLLM training step at the LLaMA-3-8B shape vs a plain transformers Llama step",
              **_gpu.device_info(dev), "tiny": args.tiny, "peak_flops": peak, "peak_source": peak_src,
              "shape": {}, "precision": "bf16 parameters, gradients and AdamW(fused=True) states (no fp32 master weights); "
                                        "loss reductions in fp32; SDPA attention (flash on the GPU)",
              "flops_convention": (
                  "PaLM/torchtitan: training FLOPs = 3 x forward; forward = 2 x (matmul weights) per token + attention "
                  "4 x layers x seq x (heads x head_dim) per token (QK^T and AV, NOT halved for the causal mask); the input "
                  "embedding lookup, norms and elementwise work are not counted. `mfu` counts the FLOPs the variant's model "
                  "needs: plain applies the LM head at every position, ours only at the text targets (3 per t2i sequence), "
                  "plus its input projector (1024->4096) at the feature tokens and regression head (4096->1024) at the targets. "
                  "`mfu_dense_lm` credits every variant with the plain model's FLOPs per token "
                  "(6 x (all params but the input embedding) + 12 x layers x seq x d), i.e. it is tokens/s on the scale "
                  "of the issue's 45% plain reference."),
              "targets": {"plain_reference_mfu_h200": 0.45, "mfu_target": 0.50},
              "excluded": "data loading (one batch, made once, on the device)", "variant_descriptions": DESCRIPTIONS,
              "variants": {}, "notes": notes}
    first = [v.strip() for v in args.variants.split(",") if v.strip()] or list(VARIANTS)
    bad = [v for v in first if v not in VARIANTS]
    if bad: raise SystemExit(f"unknown variants {bad}; expected some of {list(VARIANTS)}")

    def shape_info(cfg):
        return {"layers": layers, "layers_full_model": LLAMA3_8B["num_hidden_layers"] if not args.tiny else layers,
                "layers_auto": auto, "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size,
                "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads, "vocab": cfg.vocab_size,
                "seq": S, "micro_batch": B, "tokens_per_step": B * S, "caption_words": S - N_FEATURES - 4,
                "feature_tokens_per_seq": N_FEATURES, "feature_dim": C, "text_targets_per_step": n_text,
                "params_M": round((layers * (layer_matmul_params(cfg) + 2 * cfg.hidden_size) + 2 * cfg.vocab_size * cfg.hidden_size) / 1e6, 2)}

    def build(name, cfg):
        torch.manual_seed(args.seed)  # every variant starts from the same weights
        with _gpu.building(dev):
            llm = LlamaForCausalLM(cfg)
            model = llm if name == "plain" else PumaLM(llm, C, ids["feat"])
        model.train()
        if name in COMPILED:
            mode = None if args.compile_mode == "default" else args.compile_mode
            for layer in llm.model.layers: layer.compile(backend=args.compile_backend, mode=mode, dynamic=False)
        return model

    def bench(name):
        cfg = llama_shape(args.tiny, layers)
        model = build(name, cfg)
        opt = _gpu.adamw(model.parameters(), dev)
        x = batch["input_ids"]
        if name == "plain":
            loss_fn = lambda: model(input_ids=x, labels=x).loss
            fwd = lambda: model(input_ids=x)
            flops = train_flops(cfg, B, S, B * S)
        else:
            if name == "ours_compiled_static":
                mode = None if args.compile_mode == "default" else args.compile_mode
                tail = torch.compile(loss_tail, backend=args.compile_backend, mode=mode, dynamic=False, fullgraph=True)
                loss_fn = lambda: puma_loss_static(model, batch, tg, tail)[0]
            else: loss_fn = lambda: puma_loss(model, batch)[0]
            fwd = lambda: puma_loss(model, batch)
            flops = train_flops(cfg, B, S, n_text, B * N_FEATURES, n_feat, C)

        def step():
            loss = loss_fn()
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
            return loss.detach()

        r = {}
        if name in ("plain", "ours_eager"):  # the analytic count against torch's (forward only; lookups, norms are not matmuls)
            try: r["forward_flops_counted_over_analytic"] = round(_gpu.count_forward_flops(fwd, dev) / (flops / 3), 4)
            except AssertionError as e:  # torch 2.11's FlopCounterMode cannot count SDPA with grouped KV heads (enable_gqa) on the GPU
                r["forward_flops_counted_over_analytic"] = f"not counted: {e}"
        torch.manual_seed(args.seed)
        r.update(_gpu.time_steps(step, dev, args.warmup, args.steps, deadline))
        r["tokens_per_s"] = round(B * S / r["step_s"], 1)
        r["model_flops_per_step"] = flops
        dense = train_flops(cfg, B, S, B * S)
        r["mfu"] = round(flops / r["step_s"] / peak, 4) if peak else None
        r["mfu_dense_lm"] = round(dense / r["step_s"] / peak, 4) if peak else None
        r["achieved_tflops"] = round(flops / r["step_s"] / 1e12, 2)
        r["step_s"], r["step_s_min"] = round(r["step_s"], 5), round(r["step_s_min"], 5)
        return r

    for name in first:
        why = _gpu.skip_reason(name, name in COMPILED, args, deadline, dev, MIN_LEFT)
        if why: result["variants"][name] = {"skipped": why}; continue
        print(f"[{name}] layers={layers} batch={B} seq={S} ...", file=sys.stderr, flush=True)
        res = _gpu.run_variant(name, lambda: bench(name), dev, name in COMPILED)
        while res.get("oom") and auto and name == "plain" and layers > 4 and deadline - time.monotonic() > 30:
            notes.append(f"plain ran out of memory at {layers} layers: retried with {layers - 4} (all later variants use them too)")
            layers -= 4
            res = _gpu.run_variant(name, lambda: bench(name), dev, name in COMPILED)
        result["variants"][name] = res
        result["shape"] = shape_info(llama_shape(args.tiny, layers))
        _gpu.compare_to_plain(result["variants"])
        result["elapsed_s"] = round(time.monotonic() - t_start, 1)
        _gpu.write(result, args.out)

    v = result["variants"]
    base = v.get("ours_eager", {}).get("first_loss")
    for k in COMPILED:  # same weights, same batch: the compiled step must compute the same loss
        if base is not None and v.get(k, {}).get("first_loss") is not None:
            v[k]["first_loss_rel_diff_vs_eager"] = round(abs(v[k]["first_loss"] - base) / max(abs(base), 1e-12), 5)
    if not args.tiny and layers != LLAMA3_8B["num_hidden_layers"]:
        notes.append(f"{layers} of LLaMA-3-8B's 32 decoder layers (same width): the LM head, embeddings and optimizer weigh a "
                     "little more than at full depth, so full-depth MFU would be slightly higher")
    notes.append("ours_compiled_static demonstrates a proposed puma_loss change: gather indices and per-token weights from the "
                 "collate function (CPU) instead of nonzero()/boolean masks on the device, and no attention mask for right-padded batches "
                 "(under the causal mask real tokens never see the pads; a 4D mask would rule out flash attention)")
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    print(_gpu.write(result, args.out), flush=True)
    return result


if __name__ == "__main__":
    main()
