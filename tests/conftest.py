import os

# Tests never touch the network: an accidental hub call fails at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    "A tiny CLIP (random weights, seed 0) saved as a folder, for the stages' `data.encoder`."
    import torch
    from puma_nb.pyramid import TinyClipConfig, save_clip, tiny_clip
    d = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    save_clip(tiny_clip(), TinyClipConfig(), d)
    return d
