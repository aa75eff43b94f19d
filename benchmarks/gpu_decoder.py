"""GPU benchmark (issue 6): one training step of PUMA's decoder D_0 at the SDXL shape at 512 px, against a plain
diffusers UNet step of the same shape, in one run. Prints JSON (and writes it with --out).

The decoder is what `build_decoder(0, DecoderConfig(kind="sdxl", feature_dim=1024))` builds: SDXL's UNet (latent 4×64×64
at 512 px) reading f0, 256 CLIP-L tokens of width 1024, through the mapping layer (1024 → 2048) and the learned positional
embedding. A step is forward, backward, fused AdamW step and zero_grad; parameters, gradients and AdamW states in bf16.
The frozen VAE and CLIP are not run: the latents and features are made once and fed to every step, as if precomputed
(`decoder_loss_fn` encodes them under no_grad on every step; that cost is the encoders', not the decoder step's).

Variants, each a fresh model built with the same seed, timed one after the other (median of --steps after --warmup):
  plain            diffusers UNet2DConditionModel of the same config, bf16 inputs, random encoder_hidden_states of the
                   mapped shape (B, 256, 2048), epsilon MSE on fp32 outputs (the baseline)
  ours_eager       Decoder + decoder_loss as puma_nb.decoder has them (null-condition dropout, noise offset, fp32 noise
                   and target), under torch.autocast(bf16): decoder_loss makes fp32 noisy latents, which a bf16 UNet
                   cannot take without autocast
  ours_eager_cast  the change proposed for Decoder.forward: cast z_t and f to the UNet's dtype, so no autocast is needed
  ours_compiled    ours_eager_cast, channels_last, and regional torch.compile of the 70 BasicTransformerBlocks (one
                   static graph per distinct shape: 2 at 512 px, expected well under a minute to compile): at 512 px
                   the level-2 blocks (16x16 tokens, 1280 wide) are small, so eager launches and unfused
                   LayerNorm/GEGLU/residual kernels are expected to cost the most there
  ours_compiled_blocks  ours_compiled plus the 17 ResnetBlock2Ds (12 more graphs; skipped by the time guard if short)
  ours_compiled_unet  ours_eager_cast, channels_last, diffusers' fuse_qkv_projections() (one matmul for q, k, v in
                   self-attention, one for k, v in cross-attention) and the whole UNet compiled: the up/down samplers,
                   skip concatenations and time embedding fuse too
  fit_amp          what the library's `fit` itself runs on one GPU (`train.precision: bf16`): fp32 weights and fp32
                   fused AdamW states (2.6B parameters: about 42 GB), decoder_loss under torch.autocast(bf16)
  fit_amp_compiled fit_amp with `train.compile: true`, applied by `shard_model` as `fit` applies it

On the lent GPU (about 2 minutes on an H100, compilation included), best through benchmarks/gpu_check.sh, which
first installs the wheels benchmarks/gpu_wheels.sh fetched (the machine's image has no diffusers):
    python benchmarks/gpu_decoder.py --out $OUT/gpu_decoder.json
On a CPU, to check the code paths in seconds:
    python benchmarks/gpu_decoder.py --tiny --no-compile --steps 2 --warmup 1

FLOPs: one UNet forward counted by torch's FlopCounterMode (convolutions, matmuls, attention; at batch 1, scaled to the
batch), training = 3 × forward. MFU = that / step time / dense bf16 peak (989 TFLOP/s for H100 SXM and H200).
Good numbers: the issue measured a plain eager diffusers SDXL UNet step at 35% MFU on an H200 (512 px, batch 16);
our target on H100/H200 is MFU >= 45% for the decoder step.
"""
import argparse, contextlib, sys, time

import _gpu  # first: it sets the allocator and offline environment before torch is imported
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from puma_nb.decoder import SDXL_UNET, Decoder, DecoderConfig, build_decoder, decoder_loss, make_scheduler
from puma_nb.pyramid import SCALES
from puma_nb.training import TrainConfig, shard_model
from puma_nb.runtime import Dist

VARIANTS = ("plain", "ours_eager", "ours_eager_cast", "ours_compiled", "ours_compiled_blocks", "ours_compiled_unet",
            "fit_amp", "fit_amp_compiled")
FIT = {"fit_amp", "fit_amp_compiled"}  # what `fit` runs on one GPU with precision: bf16: fp32 weights and AdamW, autocast
AUTOCAST = FIT | {"ours_eager"}  # the variants whose decoder_loss runs under torch.autocast (the others cast their inputs)
COMPILED = {"ours_compiled": ("BasicTransformerBlock",),  # the blocks compiled one by one (regional compilation)
            "ours_compiled_blocks": ("BasicTransformerBlock", "ResnetBlock2D"),
            "ours_compiled_unet": ("UNet2DConditionModel",),  # the whole UNet in one compile (graph breaks allowed)
            "fit_amp_compiled": ()}  # compiled by the library's own TrainConfig(compile=True) (its fsdp_blocks: the UNet stages)
MIN_LEFT = {"ours_compiled": 45, "ours_compiled_blocks": 60, "ours_compiled_unet": 90, "fit_amp_compiled": 90}  # seconds a variant needs left of --max-seconds to start (compilation included)
DESCRIPTIONS = {
    "plain": "diffusers UNet2DConditionModel(SDXL config), bf16 inputs, encoder_hidden_states (B, 256, 2048), epsilon MSE",
    "ours_eager": "Decoder + decoder_loss as in puma_nb.decoder, under torch.autocast(bf16) (needed: fp32 noisy latents)",
    "ours_eager_cast": "the same with Decoder.forward casting z_t and f to the UNet's dtype (proposed), no autocast",
    "ours_compiled": "ours_eager_cast + channels_last + every BasicTransformerBlock torch.compile'd (2 graphs at 512 px)",
    "ours_compiled_blocks": "ours_compiled + every ResnetBlock2D compiled too (12 more graphs at 512 px)",
    "ours_compiled_unet": "ours_eager_cast + channels_last + fused QKV projections + the whole UNet torch.compile'd as one module",
    "fit_amp": "puma_nb's fit on one GPU with precision bf16: fp32 weights, fp32 fused AdamW states, decoder_loss under autocast",
    "fit_amp_compiled": "fit_amp + TrainConfig(compile=True) through puma_nb.training.shard_model (each UNet stage compiled)"}
TINY_UNET = {**SDXL_UNET, "sample_size": 8, "block_out_channels": (32, 64, 64), "layers_per_block": 1,
             "transformer_layers_per_block": (1, 1, 1), "attention_head_dim": (2, 4, 4), "cross_attention_dim": 64,
             "norm_num_groups": 16}  # SDXL's block structure, small


class CastDecoder(Decoder):
    "The change proposed for `Decoder.forward`: inputs cast to the UNet's dtype, so that a bf16 decoder runs without autocast."
    def forward(self, z_t, t, f, pos_weight=None, return_guess=False):
        dt = self.mapping_layer.weight.dtype
        return super().forward(z_t.to(dt), t, f.to(dt), None if pos_weight is None else pos_weight.to(dt), return_guess)


def build(tiny: bool) -> Decoder:
    "D_0 as puma_nb builds it for kind='sdxl' (tiny: the same classes at a small width)."
    if tiny: return Decoder(UNet2DConditionModel(**TINY_UNET), 64, SCALES[0])
    return build_decoder(0, DecoderConfig(kind="sdxl", feature_dim=1024))


def main(argv=None):
    t_start = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _gpu.common_args(ap)
    ap.add_argument("--batch", type=int, default=0, help="images per step (default 16; tiny 2)")
    ap.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size / 8)")
    ap.add_argument("--compile-backend", default="inductor", help="e.g. aot_eager to check tracing on a CPU")
    args = ap.parse_args(argv)
    dev = _gpu.setup(args)
    deadline = t_start + args.max_seconds
    B = args.batch or (2 if args.tiny else 16)
    auto_batch = not args.batch
    peak, peak_src = _gpu.peak_flops(dev, args.peak_tflops)
    ucfg = TINY_UNET if args.tiny else SDXL_UNET
    lat, n, C, D = (args.size // 8) if not args.tiny else 8, SCALES[0], 64 if args.tiny else 1024, ucfg["cross_attention_dim"]
    g = torch.Generator().manual_seed(args.seed)
    data = {"z0": torch.randn(B, ucfg["in_channels"], lat, lat, generator=g),  # latents as the frozen VAE gives them
            "f": torch.randn(B, n, C, generator=g), "f_null": torch.randn(1, n, C, generator=g),  # f0 and the null condition
            "h": torch.randn(B, n, D, generator=g)}  # plain: encoder_hidden_states of the mapped shape
    data = {k: v.to(dev) for k, v in data.items()}
    sch = make_scheduler("ddpm")
    notes = []
    result = {"benchmark": "gpu_decoder: PUMA's decoder D_0 training step at the SDXL shape vs a plain diffusers UNet step",
              **_gpu.device_info(dev), "tiny": args.tiny, "peak_flops": peak, "peak_source": peak_src, "shape": {},
              "precision": "bf16 parameters, gradients and AdamW(fused=True) states (no fp32 master weights), except fit_amp*: "
                           "fp32 parameters and AdamW states under torch.autocast(bf16), as fit trains; MSE in fp32; "
                           "ours_eager under torch.autocast(bf16) as decoder_loss needs; SDPA attention (flash on the GPU)",
              "flops_convention": "FlopCounterMode on one forward at batch 1 (convolutions, matmuls, SDPA attention counted "
                                  "in full), times the batch; training = 3 x forward; norms and elementwise work not counted",
              "excluded": "the frozen VAE encode and CLIP features (precomputed latents and f0 are fed to every step)",
              "targets": {"plain_reference_mfu_h200": 0.35, "mfu_target": 0.45},
              "variant_descriptions": DESCRIPTIONS, "variants": {}, "notes": notes}
    order = [v.strip() for v in args.variants.split(",") if v.strip()] or list(VARIANTS)
    bad = [v for v in order if v not in VARIANTS]
    if bad: raise SystemExit(f"unknown variants {bad}; expected some of {list(VARIANTS)}")

    def bench(name, B):
        z0, f, h = data["z0"][:B], data["f"][:B], data["h"][:B]
        torch.manual_seed(args.seed)  # every variant starts from the same weights
        with _gpu.building(dev, torch.float32 if name in FIT else torch.bfloat16): dec = build(args.tiny)
        if name == "plain":
            model = dec.unet; del dec
            z0b, hb = z0.to(torch.bfloat16), h.to(torch.bfloat16)
            T = sch.config.num_train_timesteps

            def loss_fn():
                noise = torch.randn_like(z0b)
                t = torch.randint(0, T, (B,), device=dev)
                return F.mse_loss(model(sch.add_noise(z0b, noise, t), t, encoder_hidden_states=hb).sample.float(), noise.float())
            fwd = lambda: model(z0b[:1], torch.tensor([500], device=dev), encoder_hidden_states=hb[:1])
        else:
            model = dec
            if name not in AUTOCAST: model.__class__ = CastDecoder  # the proposed Decoder.forward, on the same module
            amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if name in AUTOCAST else contextlib.nullcontext

            def loss_fn():
                with amp(): return decoder_loss(model, z0, f, data["f_null"], sch)

            def fwd():
                with amp(): return model(z0[:1], torch.tensor([500], device=dev), f[:1])
        fwd_flops = _gpu.count_forward_flops(fwd, dev)  # eager, before any compilation
        if name == "fit_amp_compiled":  # the library's own path: TrainConfig.compile applied by shard_model, as fit does
            shard_model(model, TrainConfig(compile=True), Dist(device=dev))
        elif name in COMPILED:
            model.unet.to(memory_format=torch.channels_last)
            if name == "ours_compiled_unet": model.unet.fuse_qkv_projections()
            mode = None if args.compile_mode == "default" else args.compile_mode
            for m in model.unet.modules():  # one static graph per distinct input shape, shared by the blocks of that shape
                if type(m).__name__ in COMPILED[name]: m.compile(backend=args.compile_backend, mode=mode, dynamic=False)
        opt = _gpu.adamw(model.parameters(), dev)

        def step():
            loss = loss_fn()
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
            return loss.detach()

        r = {}
        torch.manual_seed(args.seed)  # the same noise, timesteps and dropped conditions in every variant of ours
        r.update(_gpu.time_steps(step, dev, args.warmup, args.steps, deadline))
        r["forward_flops_per_image"] = fwd_flops
        r["step_s"], r["step_s_min"] = round(r["step_s"], 5), round(r["step_s_min"], 5)
        r["images_per_s"] = round(B / r["step_s"], 2)
        r["batch"] = B
        r["unet_params_M"] = round(sum(p.numel() for p in (model.unet if name != "plain" else model).parameters()) / 1e6, 2)
        return r

    for name in order:
        why = _gpu.skip_reason(name, name in COMPILED, args, deadline, dev, MIN_LEFT)
        if why: result["variants"][name] = {"skipped": why}; continue
        print(f"[{name}] batch={B} latent={lat}x{lat} ...", file=sys.stderr, flush=True)
        res = _gpu.run_variant(name, lambda: bench(name, B), dev, name in COMPILED)
        while res.get("oom") and auto_batch and name == "plain" and B > 2 and deadline - time.monotonic() > 30:
            notes.append(f"plain ran out of memory at batch {B}: retried with {B // 2} (all later variants use it too)")
            B //= 2
            res = _gpu.run_variant(name, lambda: bench(name, B), dev, name in COMPILED)
        result["variants"][name] = res
        for v in result["variants"].values():  # each variant's own count of its forward
            ff = v.get("forward_flops_per_image")
            if v.get("step_s") and ff:
                v["model_flops_per_step"] = 3.0 * ff * v["batch"]
                v["achieved_tflops"] = round(v["model_flops_per_step"] / v["step_s"] / 1e12, 2)
                v["mfu"] = round(v["model_flops_per_step"] / v["step_s"] / peak, 4) if peak else None
        result["shape"] = {"latent": [ucfg["in_channels"], lat, lat], "image_px": args.size if not args.tiny else 64, "batch": B,
                           "cond_tokens": n, "feature_dim": C, "cross_attention_dim": D,
                           "block_out_channels": list(ucfg["block_out_channels"]),
                           "transformer_layers_per_block": list(ucfg["transformer_layers_per_block"])}
        _gpu.compare_to_plain(result["variants"])
        result["elapsed_s"] = round(time.monotonic() - t_start, 1)
        _gpu.write(result, args.out)

    v = result["variants"]
    for k, ref in (("ours_eager_cast", "ours_eager"), ("fit_amp", "ours_eager"), ("fit_amp_compiled", "fit_amp"),  # same weights, same draws
                   ("ours_compiled", "ours_eager_cast"), ("ours_compiled_blocks", "ours_eager_cast"), ("ours_compiled_unet", "ours_eager_cast")):
        a, b = v.get(k, {}).get("first_loss"), v.get(ref, {}).get("first_loss")
        if a is not None and b is not None: v[k][f"first_loss_rel_diff_vs_{ref}"] = round(abs(a - b) / max(abs(b), 1e-12), 5)
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    print(_gpu.write(result, args.out), flush=True)
    return result


if __name__ == "__main__":
    main()
