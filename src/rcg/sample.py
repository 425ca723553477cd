"""Generation: RDM -> representation -> pixel generator -> tokens -> tokenizer -> uint8 images.

Each image has its own seed (``seed + index``): the representation noise, the decoding randomness and
the Gumbel choices of image i depend only on that seed, never on the batch size or the device count.
Writers: a grid PNG, a folder of PNGs, or an npz (``arr_0`` (N, H, W, C) uint8, the ADM/OpenAI format).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import dist, pixel
from .compiling import compile_blocks
from .config import RDM_SOLVERS, DiffusionConfig, RDMRun
from .data import check_channels, check_resolution
from .diffusion import GaussianDiffusion
from .encoders import Encoder
from .images import decode_image
from .loaders import find_part, load
from .precision import autocast as bf16_autocast
from .rng import per_sample, randn_per_sample
from .solvers import DPM_SOLVERS, dpm_solver_sample
from .tree import to_dict



def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 (rounded, clipped)."""
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int, pad: int = 2, value: int = 255) -> torch.Tensor:
    """uint8 (N, C, H, W) -> one uint8 (C, H', W') grid, ``nrow`` images per row."""
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), value, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
    return grid


def save_png(image: torch.Tensor, path, scale: int = 1) -> None:
    """One uint8 (C, H, W) image to PNG, optionally upscaled (nearest) for viewing."""
    arr = image.permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_images(images: torch.Tensor, out, nrow: Optional[int] = None, scale: int = 1) -> str:
    """Write uint8 (N, C, H, W) images by the extension of ``out``: ``.png`` a grid, ``.npz`` an array,
    anything else a folder of numbered PNGs. Returns a description."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        nrow = nrow or max(1, int(np.ceil(np.sqrt(len(images)))))
        save_png(make_grid(images, nrow), out, scale)
        return f"grid of {len(images)} images -> {out}"
    if out.suffix.lower() == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, arr_0=images.permute(0, 2, 3, 1).cpu().numpy())
        return f"{len(images)} images -> {out} (arr_0: N, H, W, C uint8)"
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        save_png(img, out / f"{i:06d}.png")
    return f"{len(images)} PNGs -> {out}/"


class RCGSampler:
    """The loaded parts of one RCG system: a pixel generator (any generator of the registry) with its tokenizer
    (token generators) and encoder, and an RDM."""

    def __init__(self, pixel_run: str, rdm: Optional[str] = None, device=None):
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        gen = load("pixel", pixel_run, device)
        cfg, fps = gen.config, gen.fingerprints
        if cfg is None:
            raise ValueError("sampling from an official MAGE file needs the paper presets (rcg sample --preset)")
        if cfg.autoencoder:
            raise ValueError(f"{pixel_run} is a DiT on latents: its images come from the SD VAE decoder "
                             f"({cfg.autoencoder}), which rcg does not ship; load it with rcg.loaders.load('pixel', "
                             f"...) and sample the latents with rcg.pixel.generator('dit').sampler")
        spec = pixel.generator(cfg.generator)
        self.parts = {"encoder": find_part(cfg.encoder, pixel_run)} if cfg.encoder else {}   # seen from here
        if spec.inputs == "tokens":
            self.parts["tokenizer"] = find_part(cfg.tokenizer, pixel_run)
        tokenizer = load("tokenizer", self.parts["tokenizer"], device) if spec.inputs == "tokens" else None
        # an official ADM / DiT file holds no encoder: it samples from RDM representations, has no references
        encoder = load("encoder", self.parts["encoder"], device) if cfg.encoder else None
        for part, rec in (("tokenizer", tokenizer), ("encoder", encoder)):
            if rec is not None and fps.get(part) not in (None, rec.fingerprints["self"]):
                raise ValueError(f"the {part} {getattr(cfg, part)} changed since {pixel_run} was trained")
        rdm_rec = load("rdm", rdm, device) if rdm is not None else None
        made_by = (fps.get("encoder"), rdm_rec.fingerprints.get("encoder") if rdm_rec else None)
        if None not in made_by and made_by[0] != made_by[1]:
            raise ValueError(f"the RDM {rdm} was trained on another encoder's representations than the pixel "
                             f"generator {pixel_run}; train both on the same encoder")
        self.setup(gen.module, cfg, tokenizer.module if tokenizer else None, encoder.module if encoder else None,
                   rdm_rec.module if rdm_rec else None, rdm_rec.config if rdm_rec else None, device)

    def setup(self, model, cfg, tokenizer, encoder, rdm=None, rdm_cfg=None, device=None) -> "RCGSampler":
        """Use already-loaded parts (e.g. official weights): the pixel generator ``model`` with its PixelRun
        ``cfg`` (sampling defaults), tokenizer (None for pixel generators), encoder, and optionally an RDM with
        its RDMRun ``rdm_cfg`` (None = the paper's DDIM 250 steps, eta 1)."""
        self.model, self.cfg, self.tokenizer, self.encoder = model, cfg, tokenizer, encoder
        self.spec = pixel.generator(cfg.generator)
        self.generate = self.spec.sampler(model, cfg)
        self.rdm, self.rdm_cfg = rdm, rdm_cfg
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        return self

    def configure(self, sampler: Optional[str] = None, steps: Optional[int] = None,
                  rdm_solver: Optional[str] = None, rdm_steps: Optional[int] = None) -> "RCGSampler":
        """Change the sampling settings in place (None keeps the run's): ``sampler`` of a diffusion generator
        (``"ddpm"``, ``"ddim"``, ``"dpm++2m"``, ``"dpm++2m-sde"``), its ``steps`` (MAGE: decoding steps), and the RDM's solver
        (``"ddim"``, ``"dpm++2m"``, ``"dpm++2m-sde"``) and steps. Returns ``self``.

        >>> s = RCGSampler("runs/dit", "runs/rdm").configure("dpm++2m", 10, "dpm++2m", 10)   # doctest: +SKIP
        """
        if sampler is not None and self.spec.inputs == "tokens":
            raise ValueError(f"--sampler applies to the diffusion generators, not {self.spec.name} (its decoding "
                             f"steps are --steps)")
        change = {k: v for k, v in (("sampler", sampler), ("steps", steps)) if v is not None}
        if change:
            self.cfg = replace(self.cfg, **change)
            self.generate = self.spec.sampler(self.model, self.cfg)
        change = {k: v for k, v in (("solver", rdm_solver), ("sample_steps", rdm_steps)) if v is not None}
        if change:
            if self.rdm is None:
                raise ValueError("--rdm-solver / --rdm-steps need an RDM (--rdm RUN_DIR)")
            self.rdm_cfg = replace(self.rdm_cfg if self.rdm_cfg is not None else RDMRun(model=self.rdm.cfg), **change)
        return self

    def compile(self, how=True) -> "RCGSampler":
        """``torch.compile`` the pixel generator's blocks in place (:func:`rcg.compiling.compile_blocks`; ``how``:
        True for inductor, or a backend name): the decoding loop's hot part, fused. The same images up to float
        rounding; the first batch pays the compilation (5-35 s on a CPU). On a Zen 3 CPU MAGE decoding was no
        faster than eager (BENCHMARKS.md). Returns ``self``."""
        compile_blocks(self.model, how)
        return self

    @classmethod
    def from_parts(cls, *args, **kw) -> "RCGSampler":
        return cls.__new__(cls).setup(*args, **kw)

    @property
    def cond(self) -> str:
        return self.cfg.cond

    @property
    def image_shape(self) -> tuple:
        """(channels, resolution) of the images this system makes and of the reference images it encodes
        (encoder and generator are trained on the same crops)."""
        return self.spec.image_shape(self.cfg, self.tokenizer)

    def reps_from_rdm(self, seeds: Sequence[int], label: Optional[int] = None, steps=None, eta=None) -> torch.Tensor:
        """One RDM representation per (consecutive) seed; ``label`` for a class-conditional RDM."""
        if self.rdm is None:
            raise ValueError("unconditional RCG sampling needs an RDM (--rdm RUN_DIR)")
        seeds = [int(s) for s in seeds]
        if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
            raise ValueError("seeds must be consecutive")
        res = draw_reps(self.rdm, self.rdm_cfg, len(seeds), steps, eta, seeds[0], label, batch_size=len(seeds))
        return res["reps"].to(self.device)

    @torch.no_grad()
    def reps_from_images(self, images: torch.Tensor) -> torch.Tensor:
        """Standardized representations of uint8 images at the generator's resolution."""
        if self.encoder is None:
            raise ValueError("this pixel generator names no encoder (an official ADM or DiT file holds none), so it "
                             "cannot encode reference images: sample from an RDM (--rdm), or set encoder in its "
                             "config.json to the MoCo v3 encoder it was trained with")
        return self.encoder.encode(images.to(self.device))

    @torch.no_grad()
    def images_from_reps(self, reps: Optional[torch.Tensor], seeds: Sequence[int], labels=None, steps=None,
                         temperature=None, guidance=None) -> torch.Tensor:
        """Decode one image per seed conditioned on ``reps`` (or ``labels``); uint8 (B, C, H, W). ``steps``:
        decoding steps (MAGE) or diffusion steps (DiT); settings left None are the run's."""
        out = self.generate(reps, labels, per_sample(seeds), steps=steps, temperature=temperature, guidance=guidance)
        return to_uint8(self.spec.to_unit(out, self.tokenizer)).cpu()

    def stream(self, num: int, seed: int = 0, batch_size: int = 64, label: Optional[int] = None,
               distributed: Optional[bool] = None, **kw) -> Iterator[torch.Tensor]:
        """uint8 batches of ``num`` unconditional (or class-conditional RDM) samples, image i from seed + i.

        Under several processes (torchrun; ``distributed=False`` turns it off) every process must iterate:
        batch k is made by process k % world_size, and rank 0 yields all batches in order (gathered), the
        other ranks yield nothing. The images are those of one process."""
        starts = list(range(0, num, batch_size))
        world = dist.world_size() if distributed is not False else 1
        if world == 1:
            for i in starts:
                yield self._batch(seed + i, min(batch_size, num - i), label, **kw)
            return
        for j in range(0, len(starts), world):
            k = j + dist.rank()
            if k < len(starts):
                mine = self._batch(seed + starts[k], min(batch_size, num - starts[k]), label, **kw)
            else:
                mine = torch.empty(0, dtype=torch.uint8)
            parts = dist.gather_tensors(mine)
            if dist.is_main():
                yield from (p for p in parts if len(p))

    def _batch(self, first: int, n: int, label: Optional[int], **kw) -> torch.Tensor:
        seeds = list(range(first, first + n))
        reps = self.reps_from_rdm(seeds, label) if self.cond == "rep" else None
        labels = None
        if self.cond == "class":                  # a class-label generator: the given class, or class-balanced
            ncls = self.cfg.model.num_classes
            labels = (torch.full((n,), label, dtype=torch.long) if label is not None
                      else torch.arange(first, first + n) % ncls).to(self.device)
        return self.images_from_reps(reps, seeds, labels=labels, **kw)

    def interpolate(self, a: torch.Tensor, b: torch.Tensor, num: int = 11, seed: int = 0, **kw) -> torch.Tensor:
        """``num`` images from rep = t * rep(a) + (1 - t) * rep(b), t = 1 ... 0 (paper Fig. 7); one seed for all."""
        ra, rb = self.reps_from_images(torch.stack([a, b])).unbind(0)
        ts = torch.linspace(1.0, 0.0, num, device=ra.device)
        reps = ts[:, None] * ra[None] + (1 - ts[:, None]) * rb[None]
        return self.images_from_reps(reps, [seed] * num, **kw)


def load_image_files(paths: Sequence[str], channels: int, resolution: int) -> torch.Tensor:
    """Image files -> uint8 (N, channels, resolution, resolution), decoded exactly as the same files in a
    training image folder (:func:`rcg.data.decode_image`: transparency onto white, EXIF orientation,
    bicubic shorter-side resize, center crop)."""
    check_channels(channels)
    check_resolution(resolution)
    if not paths:
        raise ValueError("no image files given")
    out = np.empty((len(paths), resolution, resolution, channels), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            out[i] = decode_image(p, resolution, channels)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:   # PIL's unreadable-data errors
            raise ValueError(f"cannot read image {p}: {e}") from e
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def encode_images(encoder: Encoder, images: torch.Tensor, batch_size: int = 500, features: bool = False,
                  bf16: bool = False) -> torch.Tensor:
    """Standardized representations (or backbone features) of uint8 images, in float32 on the CPU."""
    encoder.eval()
    dev = next(encoder.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(dev)
        with bf16_autocast(dev, bf16):
            out.append((encoder.features(x) if features else encoder.encode(x)).float().cpu())
    return torch.cat(out)


def rdm_sampler_name(solver: str, steps: int, eta: float) -> str:
    """How an RDM sampler is named in messages: "DDIM 250 steps, eta 1.0", "DPM-Solver++ 2M, 20 steps", ..."""
    if solver == "ddim":
        return f"DDIM {steps} steps, eta {eta}"
    return f"SDE-DPM-Solver++ 2M, {steps} steps" if solver == "dpm++2m-sde" else f"DPM-Solver++ 2M, {steps} steps"


@torch.no_grad()
def draw_reps(model, cfg, num: int, steps: Optional[int] = None, eta: Optional[float] = None, seed: int = 0,
              label: Optional[int] = None, labels=None, batch_size: int = 1000, progress: bool = False,
              solver: Optional[str] = None) -> dict:
    """Samples of a loaded RDM (``cfg``: its RDMRun, or None for the paper's sampler settings): the official DDIM
    (``solver`` "ddim", with ``eta``), DPM-Solver++ 2M ("dpm++2m", deterministic; ``eta`` unused) or its stochastic
    form ("dpm++2m-sde", eta 1, its noise from the per-sample generators); default the run's. {"reps" (num, D)
    float32 on the CPU, "labels" when class-conditional, "steps", "eta", "solver" (the index in RDM_SOLVERS: every
    value is a tensor, to be stored)}."""

    dev = next(model.parameters()).device
    dcfg = cfg.diffusion if cfg is not None else DiffusionConfig()
    steps = steps or (cfg.sample_steps if cfg is not None else 250)
    eta = (cfg.eta if cfg is not None else 1.0) if eta is None else eta
    solver = solver or getattr(cfg, "solver", "ddim")
    if solver not in RDM_SOLVERS:
        raise ValueError(f"RDM solver must be one of {', '.join(RDM_SOLVERS)}, got {solver!r}")
    diffusion = GaussianDiffusion(**to_dict(dcfg)).to(dev)
    ncls = model.cfg.num_classes
    if ncls > 0 and label is None and labels is None:
        raise ValueError(f"this RDM is class-conditional ({ncls} classes): pass --class N")
    if ncls == 0 and (label is not None or labels is not None):
        raise ValueError("this RDM is unconditional; --class needs a class-conditional RDM (train-rdm --class-cond)")
    if label is not None and not 0 <= label < ncls:
        raise ValueError(f"--class must be in [0, {ncls}), got {label}")
    if labels is None and label is not None:
        labels = torch.full((num,), label, dtype=torch.int64)
    chunks = []
    bar = tqdm(total=num, unit="rep", desc="sample-reps", disable=not progress)
    for i in range(0, num, batch_size):
        n = min(batch_size, num - i)
        gens = per_sample(range(seed + i, seed + i + n))
        x_T = randn_per_sample((n, model.cfg.in_channels), gens, device=dev)
        y = labels[i:i + n].to(dev) if labels is not None else None
        fn = lambda x, t: model(x, t, y)  # noqa: E731
        out = dpm_solver_sample(diffusion, fn, x_T, steps, eta=DPM_SOLVERS[solver],
                                generators=gens) if solver in DPM_SOLVERS else \
            diffusion.ddim_sample(fn, x_T, steps, eta, generators=gens)
        chunks.append(out.float().cpu())
        bar.update(n)
    bar.close()
    result = {"reps": torch.cat(chunks), "steps": torch.tensor(steps), "eta": torch.tensor(float(eta)),
              "solver": torch.tensor(RDM_SOLVERS.index(solver))}
    if labels is not None:
        result["labels"] = labels.clone()
    return result
