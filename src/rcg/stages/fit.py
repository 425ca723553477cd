"""``rcg fit DIR --out RUN``: one command from a folder of images to a trained RCG system.

The folder is decoded once (``RUN/data/``: the training images and a held-out fraction), then every stage
trains into its own run directory inside ``RUN`` (``encoder``, ``tokenizer`` for MAGE, ``cache.safetensors``,
``rdm``, ``pixel``), and ``RUN`` gets ``samples.png``, ``references.png`` (variations of held-out images),
``interpolation.png`` and ``summary.json``. Model sizes follow the data (resolution, channels); budgets count
images seen (or optimizer steps), not epochs, so 1k images train as long as 50k at the same preset.
Rerunning the same command resumes wherever it stopped; a finished stage is not run again.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Optional

import torch

from ..augment import ViewSpec
from ..config import DataConfig, EncoderRun, KNNConfig, OptimConfig, PixelRun, RDMRun, TokenizerRun
from ..presets import PIXEL_PRESETS, RDM_RUN_PRESETS
from ..tree import apply_overrides, diff
from ..data import DataError, ImageSet, load_image_folder, load_image_tensors, save_image_set, tensor_file_meta
from ..images import scan_image_folder
from ..encoders import EncoderConfig
from ..pixel.dit import DIT_PRESETS
from ..pixel.ldm_autoencoder import FirstStageConfig
from ..tokenizer import VQConfig
from .. import dist, pixel
from ..evaluate import fd_between
from ..loaders import load, load_reps
from ..precision import describe
from ..sample import RCGSampler, encode_images
from .encoder import train_encoder
from .eval import run_eval
from .pixel import train_pixel
from .rdm import train_rdm
from .reps import cache_reps
from .sample import showcase
from .tokenizer import train_tokenizer

FIT_REQUEST = "fit.json"
RESOLUTIONS = (32, 64, 128, 256)


@dataclass(frozen=True)
class FitPreset:
    """Stage templates (their data, model sizes and epochs are filled in from the data) and budgets in
    images seen (``*_images``) or optimizer steps."""
    encoder: EncoderRun
    tokenizer: TokenizerRun
    rdm: RDMRun
    pixel: Dict[str, PixelRun]   # a train-pixel template per generator of the registry
    encoder_images: int
    tokenizer_images: int
    rdm_steps: int
    pixel_images: Dict[str, int]     # per generator: a DiT learns far slower per image seen than MAGE
    views: int = 1                    # augmented views per image in the cache
    holdout: float = 0.05             # fraction of the folder held out (references, PSNR, the rep-FD floor)
    eval_images: int = 500            # generated images whose representations are compared with real ones
    tokenizer_ch: int = 16            # tokenizer width; its depth follows the resolution (8x8 tokens up to 128 px)
    note: str = ""


_VIEW1 = ViewSpec(scale=(0.2, 1.0))                 # the MoCo v3 colour recipe (ViewSpec's defaults)


_CPU_OPTIM = OptimConfig(batch_size=256, lr=2e-3, weight_decay=1e-4, schedule="cosine", warmup_epochs=0.0, bf16=None,
                         log_every=20, ckpt_every=200)
_QUICK = FitPreset(
    encoder=EncoderRun(encoder=EncoderConfig(arch="resnet", widths=(32, 64, 128), depths=(1, 1, 1), mlp_dim=1024),
                       view1=_VIEW1, view2=replace(_VIEW1, solarize_p=0.2), knn=KNNConfig(every_epochs=0.0, bank=5000),
                       optim=_CPU_OPTIM),
    # L1 + MSE: with L1 alone the codes of colour clip art decode to the per-channel median, i.e. grey (held-out
    # saturation 0.026 vs 0.106 in the images; with MSE 0.094, and 1.5 dB higher PSNR)
    tokenizer=TokenizerRun(model=VQConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, embed_dim=32,
                                          n_embed=512, num_groups=8), mse_weight=1.0,
                           optim=OptimConfig(batch_size=16, lr=4e-3, schedule="cosine", min_lr=1e-4, bf16=None,
                                             log_every=100, ckpt_every=500)),
    rdm=replace(RDM_RUN_PRESETS["fmnist-rdm-v"], sample_steps=100, solver="ddim", fd_samples=1000),
    pixel={"mage": PIXEL_PRESETS["fmnist-mage"], "dit": PIXEL_PRESETS["fmnist-dit"],
           "adm": PIXEL_PRESETS["fmnist-adm"], "ldm": PIXEL_PRESETS["fmnist-ldm"]},
    # (clip art, 7.7k images, 32 px: the RDM's rep FD / floor is 63.7 after 400 steps, 1.60 after 1000, 1.12 after 1500)
    # (a DiT after 50k images drew noise on clip art; after 480k, 23 min at 32 px, clip-art-like shapes)
    encoder_images=30_000, tokenizer_images=30_000, rdm_steps=1500,
    pixel_images={"mage": 50_000, "dit": 480_000, "adm": 100_000, "ldm": 100_000},   # (ADM, LDM: sized, not timed)
    tokenizer_ch=16,
    note="a CPU preview: MAGE ~15 min on 2 cores without native bf16 (10k images, 32 px); DiT ~30 min with it",
)
_STANDARD = FitPreset(
    encoder=replace(_QUICK.encoder, encoder=replace(_QUICK.encoder.encoder, widths=(64, 128, 256, 512),
                                                    depths=(2, 2, 2, 2), mlp_dim=2048),
                    optim=replace(_CPU_OPTIM, batch_size=512, log_every=100, ckpt_every=1000)),
    tokenizer=replace(_QUICK.tokenizer, model=replace(_QUICK.tokenizer.model, num_res_blocks=2, n_embed=1024,
                                                      num_groups=16),
                      optim=replace(_QUICK.tokenizer.optim, batch_size=64, lr=2e-3)),
    rdm=replace(RDM_RUN_PRESETS["fmnist-rdm-v"], sample_steps=250, solver="ddim", fd_samples=5000),
    pixel={"mage": replace(PIXEL_PRESETS["fmnist-mage"],
                           model=replace(PIXEL_PRESETS["fmnist-mage"].model, embed_dim=384, depth=8, num_heads=8,
                                         decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
                           optim=replace(PIXEL_PRESETS["fmnist-mage"].optim, batch_size=256, lr=1e-3)),
           "dit": replace(PIXEL_PRESETS["fmnist-dit"],
                          model=replace(DIT_PRESETS["dit-fmnist"], hidden_size=384, depth=12, num_heads=6)),
           "adm": replace(PIXEL_PRESETS["fmnist-adm"],
                          model=replace(PIXEL_PRESETS["fmnist-adm"].model, model_channels=128, num_res_blocks=2,
                                        channel_mult=(1, 2, 2))),
           "ldm": replace(PIXEL_PRESETS["fmnist-ldm"],
                          model=replace(PIXEL_PRESETS["fmnist-ldm"].model, model_channels=192))},
    encoder_images=5_000_000, tokenizer_images=2_000_000, rdm_steps=40_000,
    pixel_images={"mage": 10_000_000, "dit": 10_000_000, "adm": 10_000_000, "ldm": 10_000_000}, views=4,
    tokenizer_ch=64, eval_images=5000,
    note="for one GPU (a few hours; sized, not yet timed on a GPU)",
)
FIT_PRESETS = {"quick": _QUICK, "standard": _STANDARD}


# ------------------------------------------------------------------------------------------------
# What the data decide
# ------------------------------------------------------------------------------------------------
@dataclass
class FitPlan:
    """The resolved request: where the data are, at which size, and the stage configs."""
    request: dict
    resolution: int
    channels: int


def _budget(o: OptimConfig, rows: int, images: float = 0, steps: int = 0, warmup: float = 0.02) -> OptimConfig:
    """The batch size capped by the rows (tiny folders), a budget of images seen (or of optimizer steps at that
    batch size) as epochs of ``rows``, and a warm-up of that fraction of the budget."""
    o = replace(o, batch_size=max(2, min(o.batch_size, rows)))
    images = images or steps * o.batch_size
    return replace(o, epochs=round(max(images, 1) / max(rows, 1), 4), warmup_epochs=round(warmup * images / rows, 4))


def _tokenizer_model(base: VQConfig, resolution: int, channels: int, ch: int) -> VQConfig:
    """8x8 tokens up to 128 px (f4 at 32, f8 at 64, f16 at 128), 16x16 at 256 (f16)."""
    levels = {32: 3, 64: 4, 128: 5, 256: 5}.get(resolution) or max(2, min(5, round(math.log2(resolution / 8)) + 1))
    mult = (1, 2, 2, 4, 4)[:levels]
    return replace(base, in_channels=channels, out_channels=channels, resolution=resolution, ch=ch, ch_mult=mult)


def plan(data_dir, out, preset: str = "quick", resolution: Optional[int] = None, channels: Optional[int] = None,
         labels: bool = False, encoder: Optional[str] = None, generator: str = "mage",
         inception_weights: Optional[str] = None) -> FitPlan:
    """Check the request (paths, image sizes, channels) without writing anything, and resolve it."""
    if preset not in FIT_PRESETS:
        raise ValueError(f"unknown fit preset {preset!r} (choices: {', '.join(FIT_PRESETS)})")
    pixel.generator(generator)                    # a clear error for a name the registry does not know
    if generator not in FIT_PRESETS[preset].pixel:
        raise ValueError(f"rcg fit has no {generator} budget yet (it does {', '.join(FIT_PRESETS[preset].pixel)}): "
                         f"train it with the stage verbs (rcg train-tokenizer, cache-reps --pixels, train-pixel "
                         f"--generator {generator} --tokenizer RUN)")
    if channels not in (None, 1, 3):
        raise ValueError(f"--channels must be 1 or 3, got {channels}")
    if encoder is not None and not Path(encoder).exists():
        raise FileNotFoundError(f"--encoder {encoder} does not exist (a train-encoder run directory or an official "
                                f"MoCo v3 .pth.tar)")
    if inception_weights is not None and not Path(inception_weights).is_file():
        raise FileNotFoundError(f"--inception-weights {inception_weights} is not a file")
    scan = scan_image_folder(data_dir)
    if resolution is None:
        resolution = scan.resolution(RESOLUTIONS)
    if resolution % 8 or not 16 <= resolution <= 512:
        raise ValueError(f"--resolution must be a multiple of 8 between 16 and 512 (e.g. {', '.join(map(str, RESOLUTIONS))}); "
                         f"got {resolution}")
    enc_chans = None          # the input channels of a train-encoder run (from its config), or 3 for an official file
    if encoder is not None:
        cfg = Path(encoder) / "config.json"
        if Path(encoder).is_dir() and not cfg.is_file():
            raise FileNotFoundError(f"--encoder {encoder} is a directory without config.json (not a train-encoder run)")
        enc_chans = int(json.loads(cfg.read_text())["encoder"]["in_chans"]) if Path(encoder).is_dir() else 3
    if channels is not None and enc_chans is not None and channels != enc_chans:
        raise ValueError(f"--channels {channels} but the encoder {encoder} takes {enc_chans}-channel images")
    if channels is None:
        channels = enc_chans or (1 if scan.all_gray else 3)
    n = len(scan.files) - len(scan.unreadable)
    if n < 8:
        raise DataError(f"{data_dir} has {n} readable images; rcg fit needs at least 8")
    root = Path(data_dir).expanduser().resolve()
    holdout = max(FIT_PRESETS[preset].holdout, min(0.25, 8 / n))      # at least ~8 held-out images
    request = {"data_dir": str(root), "files": len(scan.files), "holdout": round(holdout, 4), "preset": preset,
               "resolution": resolution, "channels": channels, "labels": bool(labels),
               "encoder": str(Path(encoder).resolve()) if encoder else None, "generator": generator}
    need = n * channels * resolution * resolution * 3 + 200e6     # decoded data, cache, checkpoints
    parent = Path(out).expanduser().resolve()
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < need:
        raise OSError(f"not enough free disk under {parent}: rcg fit needs about {need / 1e9:.1f} GB, "
                      f"{free / 1e9:.1f} GB are free")
    return FitPlan(request=request, resolution=resolution, channels=channels)


def stage_configs(p: FitPlan, run: Path, n_train: int, mean, std, overrides: dict) -> dict:
    """The config of every stage, sized from the data, budgets turned into epochs."""
    pre = FIT_PRESETS[p.request["preset"]]
    r, c, lab = p.resolution, p.channels, p.request["labels"]
    train = DataConfig("tensors", path=str(run / "data" / "train.safetensors"), resolution=r, channels=c, labels=lab)
    test = replace(train, path=str(run / "data" / "test.safetensors"), split="test")
    gray = lambda v: v if c == 3 else replace(v, saturation=0.0, gray_p=0.0)      # noqa: E731
    e, t, rows = pre.encoder, pre.tokenizer, n_train * pre.views
    enc_optim = _budget(e.optim, n_train, pre.encoder_images)
    enc = replace(e, data=train, eval_data=test, view1=gray(e.view1), view2=gray(e.view2),
                  encoder=replace(e.encoder, in_chans=c, mean=tuple(mean), std=tuple(std)),
                  optim=replace(enc_optim, warmup_epochs=round(0.05 * enc_optim.epochs, 4)))
    tok = replace(t, data=train, eval_data=test, model=_tokenizer_model(t.model, r, c, pre.tokenizer_ch),
                  optim=_budget(t.optim, n_train, pre.tokenizer_images))
    rdm = replace(pre.rdm, optim=_budget(pre.rdm.optim, rows, steps=pre.rdm_steps))
    pix = pre.pixel[p.request["generator"]]
    if hasattr(pix.model, "patch_size"):          # patch generators: patches of 1/8 of the image side (the
        pix = replace(pix, model=replace(pix.model, input_size=r, patch_size=max(2, r // 8)))   # size fits both)
    if hasattr(pix.model, "first_stage"):         # the LDM: its frozen first stage is the tokenizer trained here
        pix = replace(pix, model=replace(pix.model, first_stage=FirstStageConfig.from_vq(tok.model)))
    pix = replace(pix, optim=_budget(pix.optim, rows, pre.pixel_images[p.request["generator"]]))
    cfgs = {"encoder": enc, "tokenizer": tok, "rdm": rdm, "pixel": pix}
    return {k: apply_overrides(v, overrides.get(k, [])) for k, v in cfgs.items()}


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def _check_request(run: Path, request: dict) -> None:
    """A RUN directory is for one request; rerunning it resumes, a different one is refused."""
    path = run / FIT_REQUEST
    if path.is_file():
        old = json.loads(path.read_text())
        keys = diff(old, request)
        started = any((run / d).exists() for d in ("data", "encoder", "tokenizer", "rdm", "pixel"))
        if keys and started:
            raise ValueError(f"{run} holds an rcg fit run of another request (differs in: {', '.join(keys)}); "
                             f"use another --out, or delete {run} to start over")
    run.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(request, indent=2) + "\n")


def decode_once(p: FitPlan, run: Path, progress: bool = True) -> tuple:
    """The folder decoded at the plan's size into RUN/data/{train,test}.safetensors (once; a rerun reads them)."""
    files = {s: run / "data" / f"{s}.safetensors" for s in ("train", "test")}
    key = {"data_dir": p.request["data_dir"], "resolution": p.resolution, "channels": p.channels,
           "labels": p.request["labels"], "holdout": p.request["holdout"]}
    if all(f.is_file() and json.loads(tensor_file_meta(f).get("fit", "{}")) == key for f in files.values()):
        return tuple(load_image_tensors(files[s], p.resolution, p.channels) for s in ("train", "test"))
    out = []
    for split in ("train", "test"):
        d = load_image_folder(p.request["data_dir"], p.resolution, p.channels, labels=p.request["labels"],
                              split=split, holdout=key["holdout"], progress=progress)
        save_image_set(d, files[split], {"fit": json.dumps(key)})
        out.append(d)
    return tuple(out)


def _channel_stats(images: torch.Tensor) -> tuple:
    x = images[:5000].float().div(255)
    return [round(v, 4) for v in x.mean(dim=(0, 2, 3)).tolist()], \
        [round(max(v, 0.05), 4) for v in x.std(dim=(0, 2, 3)).tolist()]


def fit_folder(data_dir, out, preset: str = "quick", resolution: Optional[int] = None, channels: Optional[int] = None,
               labels: bool = False, encoder: Optional[str] = None, generator: str = "mage",
               inception_weights: Optional[str] = None, device: Optional[str] = None, progress: bool = True,
               overrides: Optional[dict] = None, dry_run: bool = False) -> dict:
    """Train a whole RCG system on the images under ``data_dir`` into ``out`` (see the module docstring).
    ``overrides`` maps a stage (encoder, tokenizer, rdm, pixel) to ``--set`` style strings."""
    p = plan(data_dir, out, preset, resolution, channels, labels, encoder, generator, inception_weights)
    pre = FIT_PRESETS[preset]
    print(f"rcg fit: {p.request['files']} files in {p.request['data_dir']} -> {p.channels}x{p.resolution}px "
          f"({'grayscale' if p.channels == 1 else 'RGB'}{', labels from sub-folders' if labels else ', unlabelled'}); "
          f"preset {preset}: {pre.note}")
    if dry_run:
        print(json.dumps(p.request, indent=2))
        return {"request": p.request}
    run = Path(out).expanduser()
    _check_request(run, p.request)
    dev = dist.setup(device)
    print(f"precision: {describe(None, dev)} (auto; set per stage with --set STAGE.optim.bf16=...)")
    times_path = run / "stage_times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    summary = {"request": p.request, "preset": preset}
    spec = pixel.generator(generator)
    tokens = spec.needs_tokenizer                                  # a tokenizer to train first (LDM: its first stage)
    total_stages = 7 if tokens else 6
    counter = iter(range(1, total_stages + 1))

    def stage(name, what, fn):
        print(f"\n[{next(counter)}/{total_stages}] {name}: {what}", flush=True)
        t0 = time.time()
        res = fn()
        if name not in times or time.time() - t0 > 1.0:
            times[name] = round(time.time() - t0, 1)
            times_path.write_text(json.dumps(times, indent=2) + "\n")
        return res

    def finished(run_dir):
        f = run / run_dir / "summary.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def trained(name, what, fn, cfg, **kw):           # a training stage into RUN/name; a finished one is not rerun
        summary[name] = stage(name, f"{what} -> {run / name}",
                              lambda: finished(name) or fn(cfg, str(run / name), device, progress, **kw))

    train, test = stage("data", f"decoding the folder once into {run / 'data'}", lambda: decode_once(p, run, progress))
    print(f"  {len(train)} training images, {len(test)} held out ({p.request['holdout']:.0%})")
    mean, std = _channel_stats(train.images)
    cfgs = stage_configs(p, run, len(train), mean, std, overrides or {})
    summary["data"] = {"train": len(train), "heldout": len(test), "mean": mean, "std": std,
                       "classes": train.class_names}

    seen = lambda name, rows: int(round(cfgs[name].optim.epochs * rows))      # noqa: E731 (images seen)
    n, rows = len(train), len(train) * pre.views
    enc_dir = encoder or str(run / "encoder")
    if encoder:
        stage("encoder", f"using {encoder}", lambda: None)
    else:
        trained("encoder", f"MoCo v3 on the images ({seen('encoder', n):,} images seen)", train_encoder, cfgs["encoder"])
    tok_dir = str(run / "tokenizer") if tokens else None
    if tokens:
        m = cfgs["tokenizer"].model
        trained("tokenizer", f"VQ tokenizer, {m.resolution // 2 ** (len(m.ch_mult) - 1)}^2 tokens "
                             f"({seen('tokenizer', n):,} images seen)", train_tokenizer, cfgs["tokenizer"])
    cache = run / "cache.safetensors"
    crops = spec.inputs == "images"
    summary["cache"] = stage("cache", f"representations and {'crops' if crops else 'tokens'} of {pre.views} "
                                      f"view(s) of every training image -> {cache}",
                             lambda: _cache(enc_dir, cache, None if crops else tok_dir, train, p, pre, device,
                                            progress))
    trained("rdm", f"representation diffusion ({seen('rdm', rows) // cfgs['rdm'].optim.batch_size:,} steps)", train_rdm,
            replace(cfgs["rdm"], cache=str(cache), encoder=enc_dir))
    trained("pixel", f"{generator.upper()} on representations ({seen('pixel', rows):,} images seen)", train_pixel,
            replace(cfgs["pixel"], cache=str(cache), encoder=enc_dir, tokenizer=tok_dir or ""), rdm=str(run / "rdm"),
            preview_images=test.images[:8] if len(test) else None)
    summary.update(stage("outputs", "samples, variations of held-out images, interpolation, representation FD",
                         lambda: outputs(run, test, pre, inception_weights, device, progress)))
    summary.update(stage_wall_s=times, wall_s=round(sum(times.values()), 1))
    summary["precision"] = {k: v.get("precision", "-") for k, v in summary.items()
                            if isinstance(v, dict) and k in ("encoder", "tokenizer", "cache", "rdm", "pixel")}
    (run / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _report(run, summary)
    return summary


def _cache(enc_dir, cache: Path, tok_dir, train: ImageSet, p: FitPlan, pre: FitPreset, device, progress) -> dict:
    if cache.is_file():
        meta = tensor_file_meta(cache)                  # the header only
        if meta.get("encoder_fingerprint") == load("encoder", enc_dir).fingerprints["self"] and int(meta.get("views", 0)) == pre.views:
            print(f"  {cache} is up to date")
            return meta
    over = ["data.dataset=tensors", f"data.path={Path(cache).parent / 'data' / 'train.safetensors'}",
            f"data.resolution={p.resolution}", f"data.channels={p.channels}", f"data.labels={p.request['labels']}"]
    return cache_reps(enc_dir, cache, views=pre.views, data_overrides=over, device=device, tokenizer=tok_dir,
                      pixels=tok_dir is None, progress=progress)


def outputs(run: Path, test: ImageSet, pre: FitPreset, inception_weights, device, progress) -> dict:
    """RUN/samples.png, references.png, interpolation.png and the representation FD of generated images."""
    s = RCGSampler(str(run / "pixel"), str(run / "rdm"), device)
    files = showcase(s, test.images[:6], run, max(1, 96 // test.images.shape[-1]), strip=9)
    # representation FD of generated images vs the training images' (one view each), against the FD of as many
    # held-out real images: what a generator of new images from the same distribution scores
    n = min(pre.eval_images, len(test))
    if n < 2:
        return {"files": files, "generated_rep_fd": float("nan"), "heldout_rep_fd": float("nan"), "rep_fd_images": n}
    t0 = time.time()
    gen = torch.cat(list(s.stream(n, seed=10_000, batch_size=100)))
    real = load_reps(run / "cache.safetensors")[0]["reps"]
    fd_gen = fd_between(encode_images(s.encoder, gen), real)
    fd_held = fd_between(encode_images(s.encoder, test.images[:n]), real)
    res = {"files": files, "generated_rep_fd": fd_gen, "heldout_rep_fd": fd_held, "rep_fd_images": n,
           "generated_rep_fd_ratio": fd_gen / fd_held if fd_held > 0 else float("nan"),
           "eval_wall_s": round(time.time() - t0, 1)}
    print(f"  representation FD of {n} generated images vs the training images: {fd_gen:.4f}; "
          f"{n} held-out real images: {fd_held:.4f} (ratio {res['generated_rep_fd_ratio']:.2f})")
    if inception_weights:
        ref = DataConfig("tensors", path=str(run / "data" / "train.safetensors"), resolution=test.images.shape[-1],
                         channels=test.images.shape[1])
        res["fid"] = run_eval(pixel=str(run / "pixel"), rdm=str(run / "rdm"), num=pre.eval_images * 10,
                              inception_weights=inception_weights, ref_data=ref,
                              ref_cache=str(run / "inception-ref.npz"), device=device, progress=progress)
    return res


def _report(run: Path, s: dict) -> None:
    t = s.get("tokenizer") or {}
    r = s.get("rdm") or {}
    lines = [f"\nrcg fit done in {s['wall_s']:.0f} s -> {run}", f"  stage times (s): {s['stage_wall_s']}",
             f"  precision: {s['precision']}"]
    if t:
        lines.append(f"  tokenizer {t.get('psnr_split', 'held-out')} PSNR {t.get('psnr', float('nan')):.2f} dB")
    if r:
        lines.append(f"  RDM representation FD {r.get('rep_fd', float('nan')):.4f} vs floor "
                     f"{r.get('rep_fd_floor', float('nan')):.4f} ({r.get('rep_fd_protocol', 'subsets')})")
    lines.append(f"  generated images' representation FD {s['generated_rep_fd']:.4f} (held-out real images: "
                 f"{s['heldout_rep_fd']:.4f})")
    lines += [f"  {v}" for v in s["files"].values()]
    print("\n".join(lines))
