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
