"Scaling out: stages under torchrun (gloo, 2 CPU ranks) train the same models as one process; FSDP2 saves plain models."
import pytest
import torch

from _helpers import run_train
from puma_nb.checkpoints import read_metrics
from puma_nb.decoder import load_puma_decoder
from puma_nb.mllm import load_mllm

def run_stage(config, out, *overrides, ranks=0):
    return run_train(config, f"train.out_dir={out}", *overrides, ranks=ranks)


def same_losses(a, b, rel=1e-4):
    la, lb = [r["loss"] for r in read_metrics(a)], [r["loss"] for r in read_metrics(b)]
    assert len(la) == len(lb) > 0
    worst = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
    assert worst < rel, (worst, la, lb)


def test_pretrain_under_fsdp_on_two_ranks_equals_one_process(tmp_path, clip_dir):
    # FSDP2 shards each LlamaDecoderLayer (with activation checkpointing) and the root; the global batch of 4
    # is 2 micro-batches of 2, accumulated in one process or one per rank.
    args = [f"data.encoder={clip_dir}", "data.n_train=100", "train.steps=4", "train.warmup_steps=1", "train.batch_size=4",
            "train.micro_batch_size=2", "train.log_every=1", "train.progress=false", "train.precision=fp32",
            "train.parallel=fsdp", "train.activation_checkpointing=true", "model.hidden_size=64", "model.intermediate_size=128",
            "model.layers=2", "model.heads=2", "model.kv_heads=2"]
    run_stage("toy/pretrain.yaml", tmp_path / "one", *args)
    out = run_stage("toy/pretrain.yaml", tmp_path / "two", *args, ranks=2)
    assert "rank 0 sent its weights to 1 rank(s) that built the model on meta" in out  # rank 1 read no weights
    same_losses(tmp_path / "one", tmp_path / "two")
    (m1, _, _), (m2, _, _) = load_mllm(tmp_path / "one" / "model"), load_mllm(tmp_path / "two" / "model")
    s1, s2 = m1.state_dict(), m2.state_dict()  # rank 0 gathered the shards into a plain model folder
    assert s1.keys() == s2.keys() and all(torch.allclose(s1[k], s2[k], rtol=1e-3, atol=1e-5) for k in s1)


def test_pretrain_under_ddp_on_two_ranks_equals_one_process(tmp_path, clip_dir):
    # DDP, `fit`'s default for several ranks: puma_loss runs the forward through the wrapper and reads the heads from
    # the model inside it (it once asked the wrapper for `.llm` and stopped at step 1); the toy recipe's image_pos and
    # parent_skip included, and self_feed's no-grad passes, run on the module inside the wrapper (with p = 1 every rank feeds the same tokens)
    args = [f"data.encoder={clip_dir}", "data.n_train=100", "train.steps=3", "train.warmup_steps=1", "train.batch_size=4",
            "train.micro_batch_size=2", "train.log_every=1", "train.progress=false", "train.precision=fp32",
            "loss.self_feed=1.0", "loss.self_feed_passes=2",
            "model.hidden_size=64", "model.intermediate_size=128", "model.layers=1", "model.heads=2", "model.kv_heads=2"]
    run_stage("toy/pretrain.yaml", tmp_path / "one", *args)
    run_stage("toy/pretrain.yaml", tmp_path / "two", *args, ranks=2)
    same_losses(tmp_path / "one", tmp_path / "two")
    (m1, _, c1), (m2, _, _) = load_mllm(tmp_path / "one" / "model"), load_mllm(tmp_path / "two" / "model")
    assert c1.parent_skip and c1.image_pos
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.allclose(s1[k], s2[k], rtol=1e-3, atol=1e-5) for k in s1)


def test_decoder_sharded_on_two_ranks_equals_one_process(tmp_path, clip_dir):
    # FSDP2 on the UNet's down/mid/up stages with activation checkpointing, against one plain process; the diffusion
    # noise, timesteps and null-condition dropout are keyed by (step, offset in the global batch)
    args = ["scale=2", "export_dir=", f"data.encoder={clip_dir}", "data.n_train=100", "train.steps=3", "train.warmup_steps=1",
            "train.batch_size=4", "train.micro_batch_size=2", "train.log_every=1", "train.progress=false"]
    run_stage("toy/decoder_f0.yaml", tmp_path / "one", *args)
    out = run_stage("toy/decoder_f0.yaml", tmp_path / "two", *args, "train.parallel=fsdp", "train.activation_checkpointing=true", ranks=2)
    assert "rank 0 sent its weights to 1 rank(s) that built the model on meta" in out
    same_losses(tmp_path / "one", tmp_path / "two")
    d1, d2 = load_puma_decoder(tmp_path / "one" / "unet_16"), load_puma_decoder(tmp_path / "two" / "unet_16")
    s1, s2 = d1.state_dict(), d2.state_dict()
    assert all(torch.allclose(s1[k], s2[k], rtol=1e-3, atol=1e-4) for k in s1)


# --- the real path's loaders, on weights written here (no hub) ---

def test_decoder_starts_from_an_sdxl_folder_and_diffuses_in_its_vae(tmp_path):
    from diffusers import AutoencoderKL
    from puma_nb.decoder import DecoderConfig, build_decoder, tiny_unet
    from puma_nb.decoder_stage import init_from_sdxl, latent_space
    cfg = DecoderConfig()
    src = tiny_unet(cfg)  # stands in for SDXL base's unet/: the same layout as the decoder's UNet
    src.save_pretrained(tmp_path / "sdxl" / "unet")
    AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  latent_channels=4, norm_num_groups=32).save_pretrained(tmp_path / "sdxl" / "vae")
    dec = build_decoder(0, cfg)
    assert init_from_sdxl(dec, str(tmp_path / "sdxl")) == []
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dec.unet.state_dict().items())
    space = latent_space(DecoderConfig(kind="sdxl", feature_dim=64, cross_attention_dim=64, sdxl=str(tmp_path / "sdxl")))
    z = space.encode(torch.rand(2, 3, 32, 32))
    assert z.shape == (2, 4, 16, 16) and space.latent_shape(32) == (4, 16, 16) and space.decode(z).shape == (2, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="model.sdxl '/nonexistent' has no 'unet'"):
        init_from_sdxl(dec, "/nonexistent")


def test_mllm_starts_from_a_llama_folder_with_its_embeddings_grown(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    from puma_nb.mllm import MLLMConfig, build_mllm, tiny_tokenizer
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    llm.save_pretrained(tmp_path / "llama")
    m = build_mllm(MLLMConfig(hidden_size=64, intermediate_size=128, layers=1, heads=2, kv_heads=2, backbone=str(tmp_path / "llama")), tok)
    e = m.llm.get_input_embeddings().weight
    assert e.shape[0] == len(tok) and torch.equal(e[:100], llm.get_input_embeddings().weight)
    with pytest.raises(FileNotFoundError, match="model.backbone '/nonexistent' is not available"):
        build_mllm(MLLMConfig(backbone="/nonexistent"), tok)


def test_clip_l_encoder_by_name_fails_clearly_without_weights():
    from puma_nb.pyramid import load_encoder
    with pytest.raises(RuntimeError, match="could not load CLIP ViT-L-14 weights '/nonexistent.bin'"):
        load_encoder("clip-l:/nonexistent.bin")
