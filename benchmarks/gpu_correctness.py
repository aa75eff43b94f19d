"""CUDA correctness checks for issue 6, quick (seconds): on small shapes, bf16 must agree with fp32.

  mllm_bf16_params   a tiny PumaLM cast to bf16: last hidden states and Eq. 2 (puma_loss) against fp32
  mllm_autocast      the same in fp32 under torch.autocast(bf16), as `fit` trains with precision=bf16
  decoder_autocast   a tiny decoder's prediction and decoder_loss under autocast(bf16) against fp32
  static_loss        the sync-free loss of benchmarks/gpu_mllm.py equals puma_loss (fp32)

    python benchmarks/gpu_correctness.py --out $OUT/gpu_correctness.json      # on the lent GPU
    python benchmarks/gpu_correctness.py --device cpu                          # the same on a CPU
Prints JSON; exits 1 when a check fails.
"""
import argparse, json, sys

import _gpu  # first: the offline environment
import torch

from puma_nb.decoder import DecoderConfig, build_decoder, decoder_loss, make_scheduler
from puma_nb.mllm import Image, MLLMConfig, Text, build_mllm, build_sequence, collate_sequences, flatten_pyramid, tiny_tokenizer
from puma_nb.mllm_loss import puma_loss
from puma_nb.pyramid import SCALES
from gpu_mllm import loss_tail, puma_loss_static, static_targets

TOL = {"hidden": 3e-2, "loss": 2e-2, "decoder": 3e-2, "static_loss": 1e-5}


def rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    torch.manual_seed(0)
    tok, cfg = tiny_tokenizer(), MLLMConfig()
    g = torch.Generator().manual_seed(0)
    captions = ["a large red circle at the top left on a white background", "a blue square", "two green triangles",
                "a small yellow circle on a black background"]  # of different lengths: the batch is right-padded
    seqs = [build_sequence(tok, [Text(c), Image(flatten_pyramid([torch.randn(n, cfg.feature_dim, generator=g) for n in SCALES]),
                                                target=True)]) for c in captions]
    batch = {k: v.to(dev) for k, v in collate_sequences(seqs, tok.pad_token_id).items()}
    checks = {}

    def check(name, value, tol):
        checks[name] = {"rel_err": round(value, 6), "tol": tol, "ok": value <= tol}

    with torch.no_grad():
        model = build_mllm(cfg, tok).to(dev).eval()
        h32, _ = model(batch["input_ids"], batch["features"], batch["attention_mask"])
        l32, _ = puma_loss(model, batch)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            ha, _ = model(batch["input_ids"], batch["features"], batch["attention_mask"])
            la, _ = puma_loss(model, batch)
        check("mllm_autocast_hidden", rel(ha, h32), TOL["hidden"]); check("mllm_autocast_loss", rel(la, l32), TOL["loss"])
        tg = static_targets({k: v.cpu() for k, v in batch.items()}, model.feat_token_id)
        ls, _ = puma_loss_static(model, batch, {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in tg.items()}, loss_tail)
        check("static_loss_vs_puma_loss", rel(ls, l32), TOL["static_loss"])
        model = model.to(torch.bfloat16)
        hb, _ = model(batch["input_ids"], batch["features"], batch["attention_mask"])
        lb, _ = puma_loss(model, batch)
        check("mllm_bf16_params_hidden", rel(hb, h32), TOL["hidden"]); check("mllm_bf16_params_loss", rel(lb, l32), TOL["loss"])

        dec = build_decoder(0, DecoderConfig()).to(dev).eval()
        B, n = 4, SCALES[0]
        z, f = torch.randn(B, 48, 16, 16, generator=g).to(dev), torch.randn(B, n, 64, generator=g).to(dev)
        t = torch.tensor([10, 300, 600, 900], device=dev)
        e32 = dec(z, t, f)
        with torch.autocast(dev.type, dtype=torch.bfloat16): ea = dec(z, t, f)
        check("decoder_autocast_prediction", rel(ea, e32), TOL["decoder"])
        sch, f_null = make_scheduler("ddpm"), torch.randn(1, n, 64, generator=g).to(dev)
        d32 = decoder_loss(dec, z, f, f_null, sch, generator=torch.Generator(dev).manual_seed(1))
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            da = decoder_loss(dec, z, f, f_null, sch, generator=torch.Generator(dev).manual_seed(1))
        check("decoder_autocast_loss", rel(da, d32), TOL["loss"])

    ok = all(c["ok"] for c in checks.values())
    res = {"benchmark": "gpu_correctness: bf16 against fp32 on small shapes", **_gpu.device_info(dev), "ok": ok, "checks": checks}
    print(_gpu.write(res, args.out), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
