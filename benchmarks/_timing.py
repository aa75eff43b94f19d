"Shared by the step benchmarks: time two step functions alternately, so that both see the same machine state."
import statistics, time


def alternate(fns:dict, warmup:int, steps:int) -> dict:
    "Median seconds per call of each function in `fns` (name -> callable), alternating their order every round."
    names, times = list(fns), {k: [] for k in fns}
    for i in range(warmup + steps):
        for name in (names if i % 2 else names[::-1]):
            t0 = time.perf_counter(); fns[name](); dt = time.perf_counter() - t0
            if i >= warmup: times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def edit_batch(batch:int):
    "The tiny MLLM's tokenizer and config (as configs/toy/edit.yaml) and a collated edit-shaped batch: a source picture, an instruction of one of three lengths, the target picture (about 690 tokens)."
    import torch
    from puma_nb.mllm import Image, MLLMConfig, Text, build_sequence, collate_sequences, flatten_pyramid, tiny_tokenizer
    from puma_nb.pyramid import SCALES
    torch.manual_seed(0)
    tok, cfg = tiny_tokenizer(), MLLMConfig(image_pos=True, parent_skip=True, image_stride=384)
    pyr = lambda: flatten_pyramid([torch.randn(n, cfg.feature_dim) for n in SCALES])
    seqs = [build_sequence(tok, [Image(pyr()), Text("make the red circle blue" + " please" * (i % 3)), Image(pyr(), target=True)])
            for i in range(batch)]  # instructions of three lengths, as real batches have
    return tok, cfg, collate_sequences(seqs, tok.pad_token_id)
