"""AdamW's update step on the tiny models' parameters: PyTorch's default (a loop over tensors), `foreach` and `fused`.
`build_optimizer` (02_training) uses `fused` wherever every parameter is a float on the CPU or a GPU. Prints JSON.

    python benchmarks/adamw_fused.py            # random-weight tiny decoder and tiny MLLM, the toy recipes' shapes
"""
import json, platform, time

import torch

from puma_nb.config import load_stage_config
from puma_nb.job import CONFIGS, RUN_CONFIGS
from puma_nb.decoder import build_decoder
from puma_nb.mllm import MLLMConfig, build_mllm, tiny_tokenizer


def time_step(params, reps=30, **kw) -> float:
    opt = torch.optim.AdamW(params, 1e-4, **kw)
    for _ in range(3): opt.step()
    t = time.perf_counter()
    for _ in range(reps): opt.step()
    return (time.perf_counter() - t) / reps * 1000


def main():
    torch.manual_seed(0)
    models = {"tiny decoder": build_decoder(0, load_stage_config(CONFIGS / "decoder_f0.yaml", RUN_CONFIGS).model), "tiny MLLM": build_mllm(MLLMConfig(), tiny_tokenizer())}
    rows = {}
    for name, m in models.items():
        ps = [p for p in m.parameters() if p.requires_grad]
        for p in ps: p.grad = torch.randn_like(p)
        ms = {k: time_step(ps, **kw) for k, kw in [("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})]}
        rows[name] = {"tensors": len(ps), "params_M": round(sum(p.numel() for p in ps) / 1e6, 2),
                      **{f"{k}_ms": round(v, 2) for k, v in ms.items()}, "fused_speedup": round(ms["default"] / ms["fused"], 1)}
    print(json.dumps({"benchmark": "AdamW step", "device": "cpu", "threads": torch.get_num_threads(),
                      "machine": platform.processor() or platform.machine(), "torch": torch.__version__, **rows}, indent=1))


if __name__ == "__main__":
    main()
