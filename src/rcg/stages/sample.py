"""``rcg sample`` (unconditional, class-conditional RDM, or variations of reference images) and ``rcg
interpolate``, from our runs or the paper's released systems."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import dist
from ..paper import load_paper_system
from ..sample import RCGSampler, load_image_files, write_images


def load_sampler(pixel=None, rdm=None, device=None, preset=None, weights=None, mage=None, sampler=None,
                 rdm_solver=None, rdm_steps=None, compile=False) -> RCGSampler:
    """Our runs (``pixel`` + ``rdm`` run directories) or a paper preset with the official files; ``sampler``,
    ``rdm_solver``, ``rdm_steps``: :meth:`RCGSampler.configure`; ``compile``: :meth:`RCGSampler.compile`."""
    if preset is not None:
        if pixel is not None:
            raise ValueError("give either --pixel (our run) or --preset (official weights), not both")
        s = load_paper_system(preset, weights, rdm=rdm, mage=mage, device=device)
    elif pixel is None:
        raise ValueError("give --pixel RUN_DIR (and --rdm RUN_DIR), or --preset with --weights DIR")
    else:
        s = RCGSampler(pixel, rdm, device)
    s.configure(sampler, None, rdm_solver, rdm_steps)
    return s.compile(compile) if compile else s


def sample_command(pixel, rdm, out, num=64, seed=0, batch_size=64, references=None, label=None, device=None,
                   preset=None, weights=None, mage=None, sampler=None, rdm_solver=None, rdm_steps=None,
                   compile=False, **kw) -> str:
    """``rcg sample``: unconditional (RDM), class-conditional RDM (``label``), or variations of reference
    images (each row: the reference, then ``num`` images conditioned on its representation). ``sampler``,
    ``rdm_solver``, ``rdm_steps``, ``compile``: :func:`load_sampler`."""
    s = load_sampler(pixel, rdm, device, preset, weights, mage, sampler, rdm_solver, rdm_steps, compile)
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
        raise ValueError(f"--num must be at least 2, got {num}")
    s = RCGSampler(pixel, None, device)
    if s.cond != "rep":
        raise ValueError("interpolation needs a representation-conditioned pixel generator")
    ims = load_image_files([a, b], *s.image_shape)
    return write_images(s.interpolate(ims[0], ims[1], num, seed, **kw), out, nrow=num, scale=2)


def showcase(s: RCGSampler, refs: torch.Tensor, out, scale: int, strip: int = 11) -> dict:
    """The three pictures of a trained system in the folder ``out``: ``samples.png`` (64 samples, seeds 0-63),
    ``references.png`` (each reference image, then 7 images from its representation) and, with two references
    or more, ``interpolation.png`` (the first two references and ``strip`` images between them)."""
    out = Path(out)
    files = {"samples": write_images(torch.cat(list(s.stream(64, seed=0, batch_size=64))), out / "samples.png",
                                     nrow=8, scale=scale)}
    rows = [torch.cat([refs[i:i + 1], s.images_from_reps(s.reps_from_images(refs[i:i + 1]).expand(7, -1),
                                                         list(range(100, 107)))]) for i in range(len(refs))]
    files["references"] = write_images(torch.cat(rows), out / "references.png", nrow=8, scale=scale)
    if len(refs) >= 2:
        mix = s.interpolate(refs[0], refs[1], num=strip, seed=7)
        files["interpolation"] = write_images(torch.cat([refs[0:1], mix, refs[1:2]]), out / "interpolation.png",
                                              nrow=strip + 2, scale=scale)
    return files
