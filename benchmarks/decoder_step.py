"""Cost of one training step of PUMA's decoder (mapping layer + positional embedding + the tiny decoders' f_i map + UNet + A.1's loss)
against a plain diffusers UNet step of the same shape (the conditioning handed to cross-attention directly,
plain epsilon-MSE). Steps alternate between the two, so that both see the same machine state; prints JSON.

    python benchmarks/decoder_step.py                 # the tiny D_0 on CPU
    python benchmarks/decoder_step.py --batch 32 --steps 30
    python benchmarks/decoder_step.py --head-dim 2      # heads of 2 channels, as the tiny decoders had before head_dim
    python benchmarks/decoder_step.py --layers-per-block 1 --reader-weight 0

The decoder's shape is the toy recipe's (`configs/toy/decoder_f0.yaml`: two layers per block, the MLP reader and its skip) unless
overridden.
"""
import argparse, json, platform
from dataclasses import replace

import torch
import torch.nn.functional as F
from _timing import alternate

from puma_nb.config import load_stage_config
from puma_nb.job import CONFIGS, RUN_CONFIGS
from puma_nb.decoder import DecoderConfig, build_decoder, decoder_loss, make_scheduler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=DecoderConfig.head_dim, help="channels per attention head (2: before the fix)")
    ap.add_argument("--layers-per-block", type=int, default=None, help="default: the toy recipe's (2)")
    ap.add_argument("--reader-weight", type=float, default=0.0,
                    help="the reader loss λ (the toy recipe: 1 in D0's last 500 steps, 0 in every other step)")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = replace(load_stage_config(CONFIGS / "decoder_f0.yaml", RUN_CONFIGS).model, head_dim=args.head_dim)
    if args.layers_per_block: cfg = replace(cfg, layers_per_block=args.layers_per_block)
    ours = build_decoder(args.scale, cfg)
    plain = build_decoder(args.scale, cfg).unet  # an identical UNet, without PUMA's conditioning path
    sch = make_scheduler("ddpm")
    n, C, D = ours.n_tokens, cfg.feature_dim, cfg.cross_attention_dim
    z0, f, f_null = torch.randn(args.batch, 48, 16, 16), torch.randn(args.batch, n, C), torch.randn(1, n, C)
    h = torch.randn(args.batch, n, D)
    k = ours.spatial_dim
    extra = torch.randn(args.batch, k, 16, 16)  # the plain UNet gets inputs of the same width (the tiny decoders' f_i map)
    opt_a, opt_b = torch.optim.AdamW(ours.parameters(), 8e-5), torch.optim.AdamW(plain.parameters(), 8e-5)

    def step_ours():
        loss = decoder_loss(ours, z0, f, f_null, sch, reader_weight=args.reader_weight)
        opt_a.zero_grad(set_to_none=True); loss.backward(); opt_a.step()

    def step_plain():
        noise = torch.randn_like(z0)
        t = torch.randint(0, 1000, (args.batch,))
        loss = F.mse_loss(plain(torch.cat([sch.add_noise(z0, noise, t), extra], 1), t, encoder_hidden_states=h).sample, noise)
        opt_b.zero_grad(set_to_none=True); loss.backward(); opt_b.step()

    med = alternate({"ours": step_ours, "plain": step_plain}, args.warmup, args.steps)
    print(json.dumps({
        "benchmark": "decoder training step vs plain diffusers UNet step", "device": "cpu", "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "scale": args.scale, "head_dim": args.head_dim, "layers_per_block": cfg.layers_per_block,
        "reader_weight": args.reader_weight,
        "batch": args.batch, "steps": args.steps, "unet_params_M": round(sum(p.numel() for p in plain.parameters()) / 1e6, 3),
        "ours_s_per_step": round(med["ours"], 4), "plain_s_per_step": round(med["plain"], 4),
        "ratio": round(med["ours"] / med["plain"], 3)}, indent=1))


if __name__ == "__main__":
    main()
