"""Generation: RDM -> representation -> pixel generator -> tokens -> tokenizer -> uint8 images.

Each image has its own seed (``seed + index``): the representation noise, the decoding randomness and
the Gumbel choices of image i depend only on that seed, never on the batch size or the device count.
Writers: a grid PNG, a folder of PNGs, or an npz (``arr_0`` (N, H, W, C) uint8, the ADM/OpenAI format).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from .encoders import fingerprint


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
    from PIL import Image
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
    """The loaded models of one RCG system: pixel generator + its tokenizer and encoder, and an RDM."""

    def __init__(self, pixel: str, rdm: Optional[str] = None, device=None):
        from .stages import load_encoder, load_pixel, load_rdm, load_tokenizer
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, cfg, fps = load_pixel(pixel, device)
        if cfg is None:
            raise ValueError("sampling from an official MAGE file needs the paper presets (rcg sample --preset)")
        if getattr(cfg, "autoencoder", ""):
            raise ValueError(f"{pixel} is a converted official latent DiT: its images come from the SD VAE decoder "
                             f"({cfg.autoencoder}), which rcg does not ship; run the network with "
                             f"rcg.pixel.dit.dit_from_converted and decode the latents with that VAE")
        tokenizer = load_tokenizer(cfg.tokenizer, device) if cfg.generator == "mage" else None
        encoder = load_encoder(cfg.encoder, device)
        if tokenizer is not None and fps.get("tokenizer_fingerprint") not in (None, fingerprint(tokenizer)):
            raise ValueError(f"the tokenizer {cfg.tokenizer} changed since {pixel} was trained")
        if fps.get("encoder_fingerprint") not in (None, fingerprint(encoder)):
            raise ValueError(f"the encoder {cfg.encoder} changed since {pixel} was trained")
        rdm_model = rdm_cfg = None
        if rdm is not None:
            rdm_model, rdm_cfg, rdm_fp = load_rdm(rdm, device)
            if rdm_fp is not None and fps.get("encoder_fingerprint") not in (None, rdm_fp):
                raise ValueError(f"the RDM {rdm} was trained on another encoder's representations than the pixel "
                                 f"generator {pixel}; train both on the same encoder")
        self.setup(model, cfg, tokenizer, encoder, rdm_model, rdm_cfg, device)

    def setup(self, model, cfg, tokenizer, encoder, rdm=None, rdm_cfg=None, device=None) -> "RCGSampler":
        """Use already-loaded parts (e.g. converted official weights): the pixel generator ``model`` with
        its PixelRun ``cfg`` (sampling defaults), tokenizer (None for DiT), encoder, and optionally an RDM with
        its RDMRun ``rdm_cfg`` (None = the paper's DDIM 250 steps, eta 1)."""
        self.model, self.cfg, self.tokenizer, self.encoder = model, cfg, tokenizer, encoder
        self.diffusion = None
        if cfg.generator == "dit":
            from .tree import to_dict
            from .diffusion import GaussianDiffusion
            self.diffusion = GaussianDiffusion(**to_dict(cfg.diffusion)).to(next(model.parameters()).device)
        self.rdm, self.rdm_cfg = rdm, rdm_cfg
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
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
        (encoder and generator are trained on the same crops): the tokenizer's for MAGE, the DiT's for DiT."""
        c = self.cfg
        if c.generator == "dit":
            if getattr(c, "autoencoder", ""):
                raise ValueError(f"this DiT works on {c.autoencoder} latents, not images; it has no image size")
            return int(c.model.in_channels), int(c.model.input_size)
        if self.tokenizer is None:
            raise ValueError("a MAGE system needs its tokenizer to know its image size")
        return int(self.tokenizer.cfg.in_channels), int(self.tokenizer.cfg.resolution)

    def reps_from_rdm(self, seeds: Sequence[int], label: Optional[int] = None, steps=None, eta=None) -> torch.Tensor:
        """One RDM representation per (consecutive) seed; ``label`` for a class-conditional RDM."""
        from .stages import draw_reps
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
        return self.encoder.encode(images.to(self.device))

    @torch.no_grad()
    def images_from_reps(self, reps: Optional[torch.Tensor], seeds: Sequence[int], labels=None, steps=None,
                         temperature=None, guidance=None) -> torch.Tensor:
        """Decode one image per seed conditioned on ``reps`` (or ``labels``); uint8 (B, C, H, W). For DiT,
        ``steps`` are diffusion steps and ``temperature`` does not apply."""
        c = self.cfg
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        if c.generator == "dit":
            from .pixel.dit import dit_generate
            from .precision import resolve_bf16
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=resolve_bf16(c.sample_bf16, self.device)):
                x = dit_generate(self.model, self.diffusion, gens, rep=reps if self.cond == "rep" else None,
                                 labels=labels if self.cond == "class" else None, steps=steps or c.steps,
                                 sampler=c.sampler, eta=c.eta, guidance=c.guidance if guidance is None else guidance)
            return to_uint8((x + 1.0) / 2.0).cpu()
        tokens = self.model.generate(rep=reps if self.cond == "rep" else None,
                                     labels=labels if self.cond == "class" else None,
                                     steps=steps or c.steps, temperature=c.temperature if temperature is None else temperature,
                                     guidance=c.guidance if guidance is None else guidance, generators=gens,
                                     batch_size=len(seeds))
        return to_uint8(self.tokenizer.decode_ids(tokens)).cpu()

    def stream(self, num: int, seed: int = 0, batch_size: int = 64, label: Optional[int] = None,
               distributed: Optional[bool] = None, **kw) -> Iterator[torch.Tensor]:
        """uint8 batches of ``num`` unconditional (or class-conditional RDM) samples, image i from seed + i.

        Under several processes (torchrun; ``distributed=False`` turns it off) every process must iterate:
        batch k is made by process k % world_size, and rank 0 yields all batches in order (gathered), the
        other ranks yield nothing. The images are those of one process."""
        from . import dist
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
    from PIL import Image
    from .data import check_channels, check_resolution, decode_image
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


def load_sampler(pixel=None, rdm=None, device=None, preset=None, weights=None, mage=None) -> RCGSampler:
    """Our runs (``pixel`` + ``rdm`` run directories) or a paper preset with the official files."""
    if preset is not None:
        from .paper import load_paper_system
        if pixel is not None:
            raise ValueError("give either --pixel (our run) or --preset (official weights), not both")
        return load_paper_system(preset, weights, rdm=rdm, mage=mage, device=device)
    if pixel is None:
        raise ValueError("give --pixel RUN_DIR (and --rdm RUN_DIR), or --preset with --weights DIR")
    return RCGSampler(pixel, rdm, device)


def sample_command(pixel, rdm, out, num=64, seed=0, batch_size=64, references=None, label=None, device=None,
                   preset=None, weights=None, mage=None, **kw) -> str:
    """``rcg sample``: unconditional (RDM), class-conditional RDM (``label``), or variations of reference
    images (each row: the reference, then ``num`` images conditioned on its representation)."""
    from . import dist
    s = load_sampler(pixel, rdm, device, preset, weights, mage)
    if references and not dist.is_main():
        return ""
    if references:
        refs = load_image_files(references, *s.image_shape)
        reps = s.reps_from_images(refs)
        rows = []
        for i in range(len(refs)):
            imgs = s.images_from_reps(reps[i:i + 1].expand(num, -1), list(range(seed, seed + num)), **kw)
            rows.append(torch.cat([refs[i:i + 1], imgs]))
        return write_images(torch.cat(rows), out, nrow=num + 1, scale=2)
    if s.cond == "rep" and s.rdm is None:
        raise ValueError("pass --rdm RUN_DIR (or --reference IMAGE) to sample from a representation-conditioned model")
    batches = list(s.stream(num, seed=seed, batch_size=batch_size, label=label, **kw))   # split across processes
    if not dist.is_main():
        return ""
    return write_images(torch.cat(batches), out, scale=2)


def interpolate_command(pixel, a, b, out, num=11, seed=0, device=None, **kw) -> str:
    """``rcg interpolate``: a strip of ``num`` images from t * rep(a) + (1 - t) * rep(b), t from 1 to 0."""
    if num < 2:
        raise ValueError(f"--steps must be at least 2, got {num}")
    s = RCGSampler(pixel, None, device)
    if s.cond != "rep":
        raise ValueError("interpolation needs a representation-conditioned pixel generator")
    ims = load_image_files([a, b], *s.image_shape)
    return write_images(s.interpolate(ims[0], ims[1], num, seed, **kw), out, nrow=num, scale=2)
