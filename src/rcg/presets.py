"""Named presets of every stage's run config (layer 2): the paper's (``rdm-l12-w1536``, ``mage-b``, ``mage-l``,
``mocov3-vit-b``, ...) with the paper's hyper-parameters, and the CPU-sized ones (``fmnist-*``) with ours."""
from __future__ import annotations

from dataclasses import replace

from .augment import ViewSpec
from .config import (DataConfig, DiffusionConfig, EncoderRun, EvalNetRun, OptimConfig, PixelRun, RDMRun,
                     TokenizerRun)
from .encoders import IMAGENET_MEAN, IMAGENET_STD, EncoderConfig
from .evalnet import EvalNetConfig
from .pixel.adm import ADM_PRESETS
from .pixel.dit import DIT_PRESETS
from .pixel.ldm import LDM_DIFFUSION, LDM_PRESETS
from .pixel.mage import MAGE_PRESETS
from .rdm import RDM_PRESETS
from .tokenizer import VQConfig


_FMNIST_ENCODER = EncoderRun(
    data=DataConfig("fmnist", resolution=28, channels=1),
    eval_data=DataConfig("fmnist", split="test", resolution=28, channels=1),
    encoder=EncoderConfig(arch="resnet", in_chans=1, widths=(32, 64, 128), depths=(1, 1, 1), mlp_dim=1024,
                          mean=(0.286,), std=(0.353,)),
    view1=ViewSpec(scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0, gray_p=0.0),
    view2=ViewSpec(scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0, gray_p=0.0,
                   solarize_p=0.2),
    optim=OptimConfig(epochs=15, batch_size=256, lr=2e-3, weight_decay=1e-4, schedule="cosine",
                      warmup_epochs=0.2, bf16=None, log_every=20, ckpt_every=200),
)


def _mocov3_vit(embed_dim: int, depth: int, heads: int, epochs: int) -> EncoderRun:
    """The MoCo v3 ImageNet recipe (Chen et al. 2021, ViT): AdamW, lr 1.5e-4 x batch/256, wd 0.1,
    batch 4096, 40 warm-up epochs, momentum 0.99 -> 1, T 0.2, 4096-d MLPs, 256-d output."""
    blur1, blur2 = ViewSpec(scale=(0.08, 1.0), blur_p=1.0), ViewSpec(scale=(0.08, 1.0), blur_p=0.1, solarize_p=0.2)
    return EncoderRun(
        data=DataConfig("folder", resolution=224, channels=3, labels=False),
        eval_data=DataConfig("folder", split="val", resolution=224, channels=3, labels=True),
        encoder=EncoderConfig(arch="vit", in_chans=3, img_size=224, patch_size=16, embed_dim=embed_dim, depth=depth,
                              num_heads=heads, mlp_dim=4096, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224),
        view1=blur1, view2=blur2, pred_dim=4096,
        optim=OptimConfig(epochs=epochs, batch_size=4096, lr=1.5e-4 * 4096 / 256, weight_decay=0.1, schedule="cosine",
                          warmup_epochs=40, betas=(0.9, 0.999), bf16=None),
    )


ENCODER_PRESETS = {
    "fmnist-encoder": _FMNIST_ENCODER,
    "mocov3-vit-s": _mocov3_vit(384, 12, 12, 300),
    "mocov3-vit-b": _mocov3_vit(768, 12, 12, 300),
    "mocov3-vit-l": _mocov3_vit(1024, 24, 16, 300),
}


# The paper's RDM training (Table 5): AdamW lr 5.12e-4 (blr 1e-6 x batch 512), wd 0.01, constant lr,
# 200 epochs, EMA 0.9999, fp32.
_PAPER_RDM_OPTIM = OptimConfig(epochs=200, batch_size=512, lr=5.12e-4, weight_decay=0.01, ema_decay=0.9999,
                               schedule="constant", log_every=100, ckpt_every=2000)


RDM_RUN_PRESETS = {
    "rdm-l12-w1536": RDMRun(model=RDM_PRESETS["rdm-l12-w1536"], optim=_PAPER_RDM_OPTIM),
    "rdm-l12-w1536-cls1000": RDMRun(model=RDM_PRESETS["rdm-l12-w1536-cls1000"], class_cond=True,
                                    optim=_PAPER_RDM_OPTIM),
    # CPU-sized: bf16 autocast (3.3x faster than fp32 on this CPU), a higher lr decayed by a half-cycle cosine
    # (on 240k cached reps: 16 epochs constant lr -> rep FD 0.491; 24 epochs cosine -> 0.375); sampled by
    # DPM-Solver++ 2M in 20 steps (rep FD 1.03 vs the paper's DDIM 250: 1.24, 14x faster; BENCHMARKS.md)
    "fmnist-rdm": RDMRun(model=RDM_PRESETS["rdm-small"], sample_steps=20, solver="dpm++2m",
                         optim=replace(_PAPER_RDM_OPTIM, epochs=24, batch_size=512, lr=2e-3, schedule="cosine",
                                       warmup_epochs=0.5, bf16=None, log_every=50, ckpt_every=500)),
}
# Not RCG's diffusion: v prediction and beta_start 1e-4 (RCG's last DDIM step keeps noise of std 0.039, which
# alone puts a perfect model at 1.83x the rep-FD floor on Fashion-MNIST reps; x0 prediction collapses their
# narrowest directions). Rep FD / floor (benchmarks/rdm_rep_fd.py, mean of several 10k sample sets): DDIM 250
# steps (the paper's) 1.29x, DDIM 100 1.43x (24 epochs: 1.46x; the fmnist-rdm recipe: 3.46x). Sampled by the
# stochastic DPM-Solver++ 2M in 25 steps: on one run, 5 sets each, FD 0.149 vs DDIM 250's 0.137 (1.09x) from
# 10x fewer model calls; the deterministic solver reaches only 0.19-0.20 at 20 or 25 steps (BENCHMARKS.md).
RDM_RUN_PRESETS["fmnist-rdm-v"] = replace(RDM_RUN_PRESETS["fmnist-rdm"], sample_steps=25, solver="dpm++2m-sde",
                                          diffusion=DiffusionConfig(beta_start=1e-4, parameterization="v"),
                                          optim=replace(RDM_RUN_PRESETS["fmnist-rdm"].optim, epochs=48))



# The paper's MAGE training (Table 6): AdamW (0.9, 0.95), blr 1.5e-4 x 4096 / 256, wd 0.05 (not on biases and
# norms), cosine with 10 warm-up epochs, grad clip 3.0, 800 epochs (200 for ablations), AMP.
_PAPER_MAGE_OPTIM = OptimConfig(epochs=800, batch_size=4096, lr=1.5e-4 * 4096 / 256, betas=(0.9, 0.95),
                                weight_decay=0.05, wd_exclude_1d=True, schedule="cosine", warmup_epochs=10,
                                grad_clip=3.0, bf16=None, log_every=100, ckpt_every=2000)


_FMNIST_MAGE = replace(MAGE_PRESETS["mage-tiny"], embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=128,
                       decoder_depth=2, decoder_num_heads=4, dropout=0.0, attn_dropout=0.0)


PIXEL_PRESETS = {
    "mage-b": PixelRun(model=MAGE_PRESETS["mage-b"], temperature=6.0, guidance=1.0, optim=_PAPER_MAGE_OPTIM),
    "mage-l": PixelRun(model=MAGE_PRESETS["mage-l"], temperature=11.0, guidance=6.0, optim=_PAPER_MAGE_OPTIM),
    # CPU-sized: the demo's (3 epochs of 60k token maps: 5.6 min on 2 cores) and a longer reference run (8 epochs)
    # (dropout off: on a CPU its Bernoulli draws cost a third of the step, and these runs are far from overfitting)
    "fmnist-mage": PixelRun(model=_FMNIST_MAGE,
                            steps=12, temperature=0.5, guidance=0.0,
                            optim=replace(_PAPER_MAGE_OPTIM, epochs=3, batch_size=128, lr=1.5e-3, warmup_epochs=0.1,
                                          log_every=20, ckpt_every=200)),
    "fmnist-mage-ref": PixelRun(model=_FMNIST_MAGE, steps=12, temperature=0.5, guidance=0.0,
                                optim=replace(_PAPER_MAGE_OPTIM, epochs=8, batch_size=128, lr=1.5e-3,
                                              warmup_epochs=0.1, log_every=20, ckpt_every=200)),
    # DiT in pixel space on 28 px Fashion-MNIST (DiT's recipe: AdamW, constant lr, no weight decay, learned
    # sigma, EMA; a higher lr and bf16 for a CPU budget). 8 epochs: ~16 min on 2 cores (est. from ~510 img/s);
    # at 2 epochs RCG was only 0.84x the baseline's FID (both far from converged), at 8 0.58x. DDIM 25 matched
    # DDIM 50 and DDPM 50.
    "fmnist-dit": PixelRun(generator="dit", model=DIT_PRESETS["dit-fmnist"], steps=25, sampler="ddim", eta=0.0,
                           sample_bf16=None,
                           optim=OptimConfig(epochs=8, batch_size=128, lr=1e-3, weight_decay=0.0, ema_decay=0.999,
                                             warmup_epochs=0.1, grad_clip=1.0, bf16=None, log_every=20,
                                             ckpt_every=200)),
    # ADM (the guided-diffusion U-Net) in pixel space on 28 px Fashion-MNIST, with DiT's CPU recipe. Widths 32/32/64
    # (channel_mult (1, 1, 2)): 150 img/s against 99 for 32/64/64 in a probe (bf16, batch 64, 1 thread of a Zen 4);
    # 48-69 img/s per run with 4-5 jobs on 2 cores, so 6 epochs took ~90 min there (far slower than fmnist-dit)
    "fmnist-adm": PixelRun(generator="adm", model=ADM_PRESETS["adm-fmnist"], steps=25, sampler="ddim", eta=0.0,
                           sample_bf16=None,
                           optim=OptimConfig(epochs=6, batch_size=64, lr=1e-3, weight_decay=0.0, ema_decay=0.999,
                                             warmup_epochs=0.1, grad_clip=1.0, bf16=None, log_every=20,
                                             ckpt_every=200)),
    # LDM on 28 px (the fmnist-tokenizer, MAGE's, as the frozen first stage: --tokenizer RUN; 7x7x32 latents scaled
    # to unit std) on RCG's scaled-linear schedule, DDIM 50 steps eta 1 (the official sampler, shorter); ~90 img/s
    # in bf16 on one thread of a 2-core CPU shared with another training: 4 epochs in ~45 min. v prediction, not
    # the official eps: with eps, 4-epoch samples drifted off the latents (std 2.3-3.3 against 1, a third decoded
    # black), the error of eps at the schedule's lowest SNR (sqrt(alphas_cumprod[999]) = 0.012) amplified 84x
    "fmnist-ldm": PixelRun(generator="ldm", model=LDM_PRESETS["ldm-fmnist"],
                           diffusion=DiffusionConfig(**{**LDM_DIFFUSION, "parameterization": "v"}),
                           steps=50, sampler="ddim", eta=1.0, sample_bf16=None,
                           optim=OptimConfig(epochs=4, batch_size=128, lr=1e-3, weight_decay=0.01, ema_decay=0.999,
                                             warmup_epochs=0.1, grad_clip=1.0, bf16=None, log_every=20,
                                             ckpt_every=200)),
}


TOKENIZER_PRESETS = {
    # CPU-sized: 28 px gray -> 7x7 tokens, 512 codes of dim 32, 0.2 M parameters, 1 epoch. Measured on 0.6 epoch
    # probes (1 thread, shared CPU): small batches with a high lr learn fastest per CPU second (batch 64 / lr 2e-3:
    # 19.6 dB; 32 / 2e-3: 21.0; 16 / 2e-3: 22.4; 16 / 4e-3: 23.2; 16 / 8e-3: 23.6; 8 / 4e-3: 23.7 but 15 % slower);
    # L1 beat L1 + MSE, the legacy VQ loss matched the non-legacy one, bf16 autocast trains 1.5-3x faster than fp32.
    "fmnist-tokenizer": TokenizerRun(
        data=DataConfig("fmnist", resolution=28, channels=1),
        eval_data=DataConfig("fmnist", split="test", resolution=28, channels=1),
        model=VQConfig(in_channels=1, out_channels=1, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32,
                       embed_dim=32, n_embed=512, resolution=28, num_groups=8),
        eval_every_epochs=0.25,
        optim=OptimConfig(epochs=1, batch_size=16, lr=8e-3, schedule="cosine", warmup_epochs=0.02, min_lr=1e-4,
                          bf16=None, log_every=100, ckpt_every=500),
    ),
    # The official MAGE / RCG VQGAN architecture (config/mage/vqgan.yaml): f16, 16x16 tokens at 256 px.
    "vqgan-f16-1024": TokenizerRun(
        data=DataConfig("folder", resolution=256, channels=3, labels=False),
        eval_data=DataConfig("folder", split="val", resolution=256, channels=3, labels=False),
        model=VQConfig(),
        # taming-transformers' VQGAN optimiser: Adam (0.5, 0.9), lr 4.5e-6 x batch. Our loss has no perceptual or
        # adversarial term (L1 + VQ only), so this preset reproduces the architecture, not the official weights.
        optim=OptimConfig(epochs=100, batch_size=64, lr=4.5e-6 * 64, betas=(0.5, 0.9), bf16=None, log_every=100,
                          ckpt_every=2000),
    ),
}


EVALNET_PRESETS = {
    # 3 epochs: 92.4 % Fashion-MNIST test accuracy after 193 s of training (bf16, 1 thread of a 2-core Zen 4
    # shared with another training job, ~935 img/s); the 4-epoch, more regularised variant reached only 91.6 %
    "fmnist-evalnet": EvalNetRun(
        optim=OptimConfig(epochs=3, batch_size=128, lr=2e-3, weight_decay=0.05, schedule="cosine",
                          warmup_epochs=0.2, bf16=None, log_every=100, ckpt_every=500)),
    # the 22 category folders of /usr/share/openclipart/png at 32 px RGB, as decoded by ``rcg fit --labels
    # --resolution 32`` (RUN/data/{train,test}.safetensors: the paths are placeholders, filled in by
    # benchmarks/table1_clipart.py or --set data.path=... eval_data.path=...). mean / std: per channel over
    # the 7715 training images of that fit (mostly white backgrounds). 12 epochs: 67.7 % accuracy on the 403
    # held-out images (majority class 27 %; ~68 % from epoch 8 on) after 125 s of training (bf16, 1 thread of a
    # 2-core AVX512 CPU shared with another training job, ~740 img/s)
    "clipart-evalnet": EvalNetRun(
        data=DataConfig("tensors", path="RUN/data/train.safetensors", resolution=32, channels=3, labels=True),
        eval_data=DataConfig("tensors", path="RUN/data/test.safetensors", split="test", resolution=32, channels=3,
                             labels=True),
        model=EvalNetConfig(in_chans=3, num_classes=22, resolution=32, mean=(0.811, 0.790, 0.760),
                            std=(0.303, 0.312, 0.345)),
        optim=OptimConfig(epochs=12, batch_size=128, lr=2e-3, weight_decay=0.05, schedule="cosine",
                          warmup_epochs=0.3, bf16=None, log_every=20, ckpt_every=200)),
}
