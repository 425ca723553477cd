"""Makes the golden sampling fixture of tests/test_golden.py (run once, with the code before the redesign of
issue 14, at commit 8bc7258; kept to show how the fixture was made):

    cd tests/golden && OMP_NUM_THREADS=1 python make_golden.py

Trains tiny runs (encoder, tokenizer, RDM, MAGE, DiT) on toy data for a few steps, keeps their config.json and
checkpoint.safetensors (the paths inside are relative to this folder), and writes the images they sample with
fixed seeds to expected.safetensors. The test loads the same run directories with the current code and checks
that every image is bit-identical."""
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers import make_fmnist, tiny_encoder_run, tiny_rdm_run  # noqa: E402
from rcg.config import DIT_DIFFUSION, DataConfig, OptimConfig, PixelRun, TokenizerRun  # noqa: E402
from rcg.pixel.dit import DiTConfig  # noqa: E402
from rcg.pixel.mage import MAGEConfig  # noqa: E402
from rcg.tokenizer import VQConfig  # noqa: E402
import golden_cases  # noqa: E402


def main():
    from rcg.stages import cache_reps, train_encoder, train_pixel, train_rdm, train_tokenizer
    import os
    os.chdir(HERE)
    torch.set_num_threads(1)
    tmp = Path("_work")
    shutil.rmtree(tmp, ignore_errors=True)
    data = make_fmnist(tmp / "data")
    train_encoder(tiny_encoder_run(data, epochs=0.5), "encoder", "cpu", progress=False)
    tok = TokenizerRun(data=DataConfig("fmnist", path=str(data), resolution=16, channels=1),
                       eval_data=DataConfig("fmnist", path=str(data), split="test", resolution=16, channels=1),
                       model=VQConfig(in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                                      z_channels=8, embed_dim=8, n_embed=32, resolution=16, num_groups=4),
                       optim=OptimConfig(epochs=1, batch_size=32, lr=2e-3, log_every=2, ckpt_every=4))
    train_tokenizer(tok, "tokenizer", "cpu", progress=False)
    cache = str(tmp / "cache.safetensors")
    cache_reps("encoder", cache, views=2, device="cpu", tokenizer="tokenizer", pixels=True, progress=False)
    train_rdm(tiny_rdm_run(cache, "encoder", fd_samples=32), "rdm", "cpu", progress=False)
    train_pixel(PixelRun(cache=cache, encoder="encoder", tokenizer="tokenizer",
                         model=MAGEConfig(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                                          decoder_num_heads=2),
                         steps=4, temperature=1.0, guidance=0.5,
                         optim=OptimConfig(epochs=1, batch_size=32, lr=1e-3, log_every=2, ckpt_every=4)),
                "mage", "cpu", progress=False)
    train_pixel(PixelRun(generator="dit", cache=cache, encoder="encoder",
                         dit=DiTConfig(patch_size=4, hidden_size=32, depth=2, num_heads=2),
                         diffusion=DIT_DIFFUSION, steps=6, sampler="ddim", guidance=0.5,
                         optim=OptimConfig(epochs=2, batch_size=32, lr=2e-3, ema_decay=0.99, log_every=2,
                                           ckpt_every=8)),
                "dit", "cpu", progress=False)
    for run in ("encoder", "tokenizer", "rdm", "mage", "dit"):
        for f in Path(run).iterdir():
            if f.name not in ("config.json", "checkpoint.safetensors"):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    shutil.rmtree(tmp)
    images = golden_cases.sample_all()
    from safetensors.torch import save_file
    save_file(images, "expected.safetensors")
    print({k: tuple(v.shape) for k, v in images.items()})


if __name__ == "__main__":
    main()
