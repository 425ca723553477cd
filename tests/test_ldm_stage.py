"""The LDM as a registry generator of train-pixel: our tokenizer becomes its frozen first stage (the registry's
prepare hook), training moves only the U-Net, and the run samples and loads like any pixel run."""
from dataclasses import replace

import torch

from rcg.config import DiffusionConfig, OptimConfig, PixelRun
from rcg.loaders import load
from rcg.pixel.ldm import LDM_DIFFUSION, LDM_PRESETS
from rcg.sample import RCGSampler
from rcg.stages import cache_reps, train_pixel
from rcg.store import load_tensors
from test_dist import tiny_parts


def test_train_pixel_ldm_on_our_tokenizer(tmp_path):
    root = tiny_parts(tmp_path)                          # 16 px gray data, an encoder, a tokenizer (4x4x8 latents)
    cache_reps(root / "enc", root / "px.safetensors", views=1, device="cpu", pixels=True, progress=False)
    model = replace(LDM_PRESETS["ldm-fmnist"], model_channels=16, num_groups=8, num_head_channels=8,
                    rep_drop_prob=0.1)
    cfg = PixelRun(generator="ldm", cache=str(root / "px.safetensors"), encoder=str(root / "enc"),
                   tokenizer=str(root / "tok"), model=model, diffusion=DiffusionConfig(**LDM_DIFFUSION), steps=4,
                   sampler="ddim", eta=1.0,
                   optim=OptimConfig(epochs=0.5, batch_size=32, lr=1e-3, ema_decay=0.99, log_every=1, ckpt_every=2,
                                     sample_every=0))
    summary = train_pixel(cfg, str(tmp_path / "ldm"), "cpu", progress=False)
    assert summary["generator"] == "ldm" and summary["steps"] == 2
    weights = load_tensors(tmp_path / "ldm" / "checkpoint.safetensors")[0]
    tok = load("tokenizer", root / "tok").module
    for k, v in tok.state_dict().items():                # the first stage is the tokenizer, untouched by training
        assert torch.equal(weights[f"first_stage_model.vq.{k}"], v), k
    rec = load("pixel", tmp_path / "ldm")
    assert rec.config.model.first_stage.kind == "rcg-vq" and rec.fingerprints["tokenizer"] is not None
    # scale_by_std: the stored scale_factor gives the training latents unit std (computed here independently)
    crops = load_tensors(root / "px.safetensors")[0]["images"][:1024]
    with torch.no_grad():
        z = tok.encoder(crops.float() / 255.0)
    assert rec.config.model.scale_by_std and abs(rec.config.model.scale_factor - 1.0 / z.std().item()) < 1e-4
    assert abs(rec.module.encode(crops.float() / 255.0 * 2 - 1).std().item() - 1.0) < 1e-3
    s = RCGSampler(str(tmp_path / "ldm"), None, "cpu")
    images = s.images_from_reps(torch.randn(2, 16), [0, 1])
    assert images.dtype == torch.uint8 and images.shape == (2, 1, 16, 16)
    again = s.images_from_reps(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)), [0, 1])
    assert torch.equal(again, s.images_from_reps(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)),
                                                 [0, 1]))                                  # same seeds, same images
