"""Cached vs uncached generation of one image's 341 feature tokens (f4 → f0) by the tiny MLLM.

Cached: one new token per step, the keys and values of earlier ones reused (transformers' DynamicCache).
Uncached: the whole prefix recomputed for every token, as Emu2's released code does. Both paths are the same
function (`generate_features(use_cache=...)`), run alternately; prints JSON.

    python benchmarks/mllm_generation.py
    python benchmarks/mllm_generation.py --batch 1 4 8 --repeats 3
"""
import argparse, json, platform, statistics, time

import torch

from puma_nb.mllm import MLLMConfig, Text, build_mllm, build_prompt, generate_features, tiny_tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = build_mllm(MLLMConfig(), tok).eval()
    results = []
    for batch in args.batch:
        prompts = [build_prompt(tok, [Text("a small blue square at the center and a large green triangle at the bottom right on a gray background")],
                                open_image=True)] * batch
        times = {"cached": [], "uncached": []}
        for r in range(args.repeats):
            for use_cache in ((True, False) if r % 2 == 0 else (False, True)):
                t0 = time.perf_counter()
                out = generate_features(model, prompts, tok.pad_token_id, scale=0, use_cache=use_cache)
                times["cached" if use_cache else "uncached"].append(time.perf_counter() - t0)
        assert out.shape[1] == 341
        med = {k: statistics.median(v) for k, v in times.items()}
        results.append({"batch": batch, "cached_s": round(med["cached"], 3), "uncached_s": round(med["uncached"], 3),
                        "speedup": round(med["uncached"] / med["cached"], 2)})
    print(json.dumps({"benchmark": "341-token image generation: KV cache vs prefix recomputation", "device": "cpu",
                      "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "prompt_tokens": len(prompts[0]["input_ids"]), "repeats": args.repeats,
                      "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "results": results}, indent=1))

if __name__ == "__main__":
    main()
