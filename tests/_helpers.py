"Helpers shared by the test files (tests/ is on sys.path under pytest's default import mode)."
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_train(config, *overrides, ranks=0):
    "`python -m puma_nb.train --config configs/<config> overrides…` (under torchrun with `ranks` processes); its output, or a failed assert."
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks else [sys.executable])
    cmd += ["-m", "puma_nb.train", "--config", str(ROOT / "configs" / config), *overrides]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr


def puma_unet_class():
    """PUMA's `models.py` in small: diffusers' `UNet2DConditionModel` whose config also registers the four mapping arguments,
    holding `mapping_layer` (none when the widths agree) and, with `use_embeds`, `embed_img_pos` among the UNet's own weights."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch import nn

    class PumaUNet(UNet2DConditionModel):
        def __init__(self, mapping_dim=1024, mapping_dim1=1024, num_tokens=256, use_embeds=True, **unet):
            super().__init__(**unet)
            self.register_to_config(mapping_dim=mapping_dim, mapping_dim1=mapping_dim1, num_tokens=num_tokens, use_embeds=use_embeds)
            if use_embeds: self.embed_img_pos = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, num_tokens, mapping_dim1), std=0.02))
            self.mapping_layer = nn.Linear(mapping_dim, mapping_dim1) if mapping_dim != mapping_dim1 else None

        def condition(self, f):
            "What PUMA's forward feeds the cross-attention: the mapping layer, plus the positional embedding."
            h = self.mapping_layer(f) if self.mapping_layer is not None else f
            return h + self.embed_img_pos if self.config.use_embeds else h
    return PumaUNet


SMALL_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=(1, 2), norm_num_groups=16)


def puma_decoder_folder(folder, num_tokens=256, mapping_dim=64, mapping_dim1=32, keep_mapping_keys=False, seed=0, **save):
    """A `unet_<n>` folder written the way PUMA's release is: the PumaUNet's `save_pretrained` (sharded unless `save` says
    otherwise), and, unless `keep_mapping_keys`, no mapping arguments in config.json (PUMA's script passes them). Returns the model."""
    import json
    import torch
    torch.manual_seed(seed)
    unet = puma_unet_class()(mapping_dim=mapping_dim, mapping_dim1=mapping_dim1, num_tokens=num_tokens,
                             use_embeds=num_tokens == 256, **SMALL_UNET).eval()
    unet.save_pretrained(folder, **{"max_shard_size": "200KB", **save})
    if not keep_mapping_keys:
        cfg = json.loads((Path(folder) / "config.json").read_text())
        for k in ("mapping_dim", "mapping_dim1", "num_tokens", "use_embeds"): cfg.pop(k)
        (Path(folder) / "config.json").write_text(json.dumps(cfg))
    return unet


def small_quick_gelu_clip():
    "A small random QuickGELU ViT on CLIP-L's grid (patch 14 at 224 px), with a text tower as CLIP has."
    import open_clip, torch
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=32, quick_gelu=True,
                          vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=14, image_size=224),
                          text_cfg=CLIPTextCfg(layers=1, width=32, heads=1, context_length=8)).eval()


def puma_clip_folder(visual, folder):
    """A transformers `CLIPModel` folder laid out as PUMA's `ckpts/clip-vit-large-patch14` (text and vision towers, keys under
    `vision_model.` / `text_model.`, a preprocessor config), holding `visual`'s weights."""
    import json
    from safetensors.torch import save_file
    import open_clip
    from transformers import CLIPConfig, CLIPModel
    from puma_nb.pyramid import vision_model_from_open_clip
    v = vision_model_from_open_clip(visual)
    cfg = CLIPConfig(vision_config=v.config.to_dict(), projection_dim=32,
                     text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1, bos_token_id=0, eos_token_id=1,
                                      hidden_act="quick_gelu", vocab_size=100, max_position_embeddings=8))
    full = CLIPModel(cfg)
    sd = {k: t for k, t in full.state_dict().items() if not k.startswith("vision_model.")}
    sd.update({f"vision_model.{k}": t for k, t in v.state_dict().items()})
    folder.mkdir(parents=True)
    save_file({k: t.contiguous() for k, t in sd.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "transformers_version": "4.44.0"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(open_clip.OPENAI_DATASET_MEAN),
                                                                 "image_std": list(open_clip.OPENAI_DATASET_STD), "crop_size": 224}))
    return folder
