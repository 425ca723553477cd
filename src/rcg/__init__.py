"""rcg: representation-conditioned image generation (RCG; Li, Katabi & He, NeurIPS 2024).

A frozen self-supervised encoder maps an image to a representation; a representation diffusion model (RDM)
learns to generate representations; a pixel generator (MAGE, DiT, ADM, LDM) makes an image conditioned on one.

Public names (imported on first use, so ``import rcg`` stays light): ``RCGPipeline`` (a trained system from one
path: samples, variations, interpolation, ``save_pretrained``), ``RCGSampler`` (generation underneath),
``load`` / ``Loaded`` (one loader for run directories and official files), ``load_paper_system`` and
``PAPER_PRESETS`` (the paper's released systems), the run configs (``EncoderRun``, ``TokenizerRun``, ``RDMRun``,
``PixelRun``, ``DataConfig``, ``OptimConfig``), their presets (``ENCODER_PRESETS``, ``TOKENIZER_PRESETS``,
``RDM_RUN_PRESETS``, ``PIXEL_PRESETS``), the generator registry (``GENERATORS``) and the stage functions
(``train_encoder``, ``cache_reps``, ``train_rdm``, ``train_tokenizer``, ``train_pixel``, ``fit_folder``, ``demo``)
and ``plot_run`` (a run's curves).

Tensor conventions:
    images   uint8 (B, C, H, W) at every boundary; inside a model, floats in that model's range (MAGE's VQGAN
             takes [0, 1], diffusion models [-1, 1]).
    rep      float (B, D), each representation standardized by its own mean and (unbiased) std.
    tokens   int64 (B, L); labels int64 (B,).
    t        diffusion time counts up from data (0) to noise; ``guidance`` is the paper's tau:
             cond + tau (cond - uncond), 0 = off (a DiT cfg scale s is 1 + tau).
    seeds    one per generated image: the same seed gives the same image at any batch size.

Layers (each module imports only from its own layer or lower ones; tests/test_layers.py checks it):
    0 base        dist, rng, tree, store, layers, precision
    1 networks    encoders, ssl, rdm, tokenizer, pixel/ (the generator registry: MAGE, DiT, ADM, LDM),
                  diffusion, solvers, guidance, augment, data, prepared, images, evalnet
    2 configs     config, presets
    3 machinery   train (the loop), optim, feed, watch, official/ (official formats), loaders, sample, pipeline,
                  evaluate/, paper
    4 stages      stages/ (one module per verb)
    5 front ends  cli, serve/ (the web playground)
"""
import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "RCGPipeline": "pipeline", "RCGSampler": "sample", "load": "loaders", "Loaded": "loaders",
    "load_paper_system": "paper", "PAPER_PRESETS": "paper", "GENERATORS": "pixel",
    **{name: "config" for name in ("EncoderRun", "TokenizerRun", "RDMRun", "PixelRun", "DataConfig", "OptimConfig")},
    **{name: "presets" for name in ("ENCODER_PRESETS", "TOKENIZER_PRESETS", "RDM_RUN_PRESETS", "PIXEL_PRESETS")},
    **{name: "stages" for name in ("train_encoder", "cache_reps", "train_rdm", "train_tokenizer", "train_pixel",
                                   "fit_folder", "demo", "plot_run")},
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'rcg' has no attribute {name!r}")
