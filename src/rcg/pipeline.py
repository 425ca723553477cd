"""``RCGPipeline``: a trained RCG system as one object, loaded from one path (layer 3).

    from rcg import RCGPipeline
    pipe = RCGPipeline.from_pretrained("runs/mine")             # an rcg fit run, or a saved pipeline folder
    images = pipe(8, seed=0)                                    # 8 PIL images; image i from seed + i
    more = pipe.variations("shoe.png", 4)                       # from a reference image's representation
    strip = pipe.interpolate("a.png", "b.png", 7)               # between two images' representations
    pipe.save_pretrained("my-pipeline")                         # one self-contained folder, no pickles

A saved pipeline is a folder with ``pipeline.json`` (which component is in which sub-folder) and one sub-folder
per component (``pixel``, ``encoder``, ``tokenizer`` for token generators, ``rdm`` when there is one), each a run
directory of its kind (``config.json`` + ``checkpoint.safetensors``), loadable with :func:`rcg.loaders.load`.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
from PIL import Image

from . import __version__
from .loaders import load
from .precision import autocast, native_bf16, precision_name
from .sample import RCGSampler, load_image_files
from .store import CONFIG, WEIGHTS, atomic_write, load_tensors, read_config, save_tensors

INDEX = "pipeline.json"
ImageLike = Union[str, Path, Image.Image, torch.Tensor]


def _bf16_of(dtype, device) -> Optional[bool]:
    """None (the runs' own settings), or whether to compute in bf16, from a ``dtype`` argument."""
    if dtype is None:
        return None
    if dtype == "auto":
        return native_bf16(device)
    if dtype in (torch.bfloat16, "bfloat16", "bf16"):
        if not native_bf16(device):
            warnings.warn(f"bf16 is emulated on {device} (no native bf16): sampling will be several times slower "
                          f"than fp32; dtype='auto' picks the fast one", stacklevel=3)
        return True
    if dtype in (torch.float32, "float32", "fp32"):
        return False
    raise ValueError(f"dtype must be None, 'auto', torch.bfloat16 or torch.float32, got {dtype!r}")


def _to_pil(images: torch.Tensor) -> List[Image.Image]:
    arr = images.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arr]


class RCGPipeline:
    """Sampling, variations and interpolation of one RCG system (:class:`rcg.sample.RCGSampler` underneath).
    Every method takes ``seed`` (image i from ``seed + i``) and the sampling settings ``guidance`` (tau),
    ``temperature`` (MAGE) and ``steps``, defaulting to the pixel run's; ``output_type`` is ``"pil"`` (a list of
    PIL images) or ``"uint8"`` (a uint8 tensor (N, C, H, W))."""

    def __init__(self, sampler: RCGSampler, sources: dict, dtype=None):
        self.sampler, self.sources = sampler, sources
        self.bf16 = _bf16_of(dtype, sampler.device)
        if self.bf16 is not None:       # the generator's own sampling precision too (DiT's sample_bf16)
            s = sampler
            s.setup(s.model, replace(s.cfg, sample_bf16=self.bf16), s.tokenizer, s.encoder, s.rdm, s.rdm_cfg, s.device)

    @classmethod
    def from_pretrained(cls, path, rdm=None, device=None, dtype=None) -> "RCGPipeline":
        """A saved pipeline folder, an ``rcg fit`` run (``RUN/pixel`` + ``RUN/rdm``), or a pixel run directory (ours
        or converted by ``rcg convert``) with ``rdm`` an RDM run directory or official file.

        ``device``: "cpu", "cuda", ... (default: cuda when available). ``dtype``: None computes as the runs were
        set up to sample (fp32 unless a run says otherwise; the images of ``rcg sample``); ``"auto"`` bf16 where
        the device computes it natively, else fp32; ``torch.bfloat16`` or ``torch.float32`` force one (bf16 on
        a CPU without native bf16 is emulated and 5-17x slower: a warning says so).

            pipe = RCGPipeline.from_pretrained("runs/mine", device="cpu", dtype="auto")
        """
        path = Path(path)
        if (path / INDEX).is_file():
            return cls._from_saved(path, device, dtype)
        if (path / "pixel" / CONFIG).is_file():
            path, rdm = path / "pixel", rdm or (path / "rdm" if (path / "rdm" / CONFIG).is_file() else None)
        s = RCGSampler(str(path), None if rdm is None else str(rdm), device)
        parts = {"pixel": str(path), **s.parts, **({"rdm": str(rdm)} if rdm is not None else {})}
        return cls(s, parts, dtype)

    def describe(self) -> dict:
        """What this system makes and takes: generator, conditioning, image size, the RDM's classes (0 when
        unconditional or absent) and the sampling defaults.

            pipe.describe()["image_shape"]     # (channels, resolution)
        """
        s, cfg = self.sampler, self.sampler.cfg
        return {"generator": cfg.generator, "cond": cfg.cond, "image_shape": tuple(s.image_shape),
                "has_rdm": s.rdm is not None, "num_classes": s.rdm.cfg.num_classes if s.rdm is not None else 0,
                "label_classes": cfg.model.num_classes if cfg.cond == "class" else 0,
                "defaults": {"steps": cfg.steps, "temperature": cfg.temperature, "guidance": cfg.guidance},
                "uses_temperature": s.spec.inputs == "tokens", "precision": precision_name(bool(self.bf16)),
                "device": str(s.device)}

    @classmethod
    def _from_saved(cls, path: Path, device, dtype=None) -> "RCGPipeline":
        index = json.loads((path / INDEX).read_text())
        parts = {name: load(name, path / folder, device) for name, folder in index["components"].items()}
        for name in ("encoder", "tokenizer"):
            trained_with = parts["pixel"].fingerprints.get(name)
            if name in parts and trained_with not in (None, parts[name].fingerprints["self"]):
                raise ValueError(f"{path}: the {name} is not the one its pixel generator was trained with")
        rdm = parts.get("rdm")
        s = RCGSampler.from_parts(parts["pixel"].module, parts["pixel"].config,
                                  parts["tokenizer"].module if "tokenizer" in parts else None,
                                  parts["encoder"].module if "encoder" in parts else None,
                                  rdm.module if rdm else None, rdm.config if rdm else None, device)
        return cls(s, {name: str(path / folder) for name, folder in index["components"].items()}, dtype)

    def save_pretrained(self, out) -> Path:
        """Write this system to the folder ``out``: every component's config and (inference) weights, and
        ``pipeline.json``. The components name each other by their place in the folder, so it can be moved.

            pipe.save_pretrained("my-rcg")
            same = RCGPipeline.from_pretrained("my-rcg")        # the same images for the same seeds
        """
        out = Path(out)
        for name, src in self.sources.items():
            if not Path(src).is_dir():
                raise ValueError(f"the {name} of this pipeline is the official file {src}: convert it first "
                                 f"(rcg convert {src} DIR) and load the pipeline from the converted run")
            config = read_config(src)
            if name in ("pixel", "rdm"):                 # the parts they were trained with, by their new place
                config.update({k: k for k in ("encoder", "tokenizer") if k in config and k in self.sources})
            tensors, meta = load_tensors(Path(src) / WEIGHTS)
            meta.pop("sha256", None)
            atomic_write(out / name / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
            save_tensors(out / name / WEIGHTS, tensors, meta)
        index = {"format": "rcg-pipeline", "rcg_version": __version__, "components": {k: k for k in self.sources},
                 "sources": self.sources}
        atomic_write(out / INDEX, (json.dumps(index, indent=2) + "\n").encode())
        return out

    def __call__(self, num: int = 1, seed: int = 0, guidance=None, temperature=None, steps=None,
                 class_label: Optional[int] = None, batch_size: int = 64, output_type: str = "pil"):
        """``num`` samples: a representation from the RDM (``class_label`` for a class-conditional RDM), then the
        pixel generator. A class-label generator takes ``class_label`` directly (class-balanced without it).

            grid = pipe(16, seed=0, guidance=1.0)               # RCG-G with tau = 1
            tensor = pipe(4, seed=16, output_type="uint8")      # the next 4 seeds, uint8 (4, C, H, W)
        """
        with self._precision():
            images = torch.cat(list(self.sampler.stream(num, seed=seed, batch_size=batch_size, label=class_label,
                                                        distributed=False, steps=steps, temperature=temperature,
                                                        guidance=guidance)))
        return self._out(images, output_type)

    def variations(self, image: ImageLike, num: int = 4, seed: int = 0, guidance=None, temperature=None, steps=None,
                   output_type: str = "pil"):
        """``num`` images conditioned on the representation of ``image`` (a path, a PIL image or uint8 (C, H, W)),
        decoded as the training images were (paper Fig. 6).

            shoes = pipe.variations("shoe.png", 8, seed=0)
        """
        with self._precision():
            rep = self.sampler.reps_from_images(self._images([image])).float()
            images = self.sampler.images_from_reps(rep.expand(num, -1), list(range(seed, seed + num)), steps=steps,
                                                   temperature=temperature, guidance=guidance)
        return self._out(images, output_type)

    def interpolate(self, a: ImageLike, b: ImageLike, num: int = 11, seed: int = 0, guidance=None, temperature=None,
                    steps=None, output_type: str = "pil"):
        """``num`` images from ``t rep(a) + (1 - t) rep(b)``, t = 1 ... 0, all from one seed (paper Fig. 7).

            strip = pipe.interpolate("shoe.png", "bag.png", 11)
        """
        if num < 2:
            raise ValueError(f"an interpolation needs num >= 2 images, got {num}")
        ims = self._images([a, b])
        with self._precision():
            images = self.sampler.interpolate(ims[0], ims[1], num, seed, steps=steps, temperature=temperature,
                                              guidance=guidance)
        return self._out(images, output_type)

    def _precision(self):
        return autocast(self.sampler.device, bool(self.bf16))

    def _images(self, items: Sequence[ImageLike]) -> torch.Tensor:
        """uint8 (N, C, H, W) at the system's size, each decoded like a file of a training folder."""
        files = []
        for x in items:
            if isinstance(x, torch.Tensor):
                x = _to_pil(x.unsqueeze(0))[0] if x.dim() == 3 else x
                if isinstance(x, torch.Tensor):
                    raise ValueError(f"an image tensor must be uint8 (C, H, W), got shape {tuple(x.shape)}")
            if isinstance(x, Image.Image):
                buf = io.BytesIO()
                x.save(buf, format="PNG")
                x = io.BytesIO(buf.getvalue())
            files.append(x)
        return load_image_files(files, *self.sampler.image_shape)

    @staticmethod
    def _out(images: torch.Tensor, output_type: str):
        if output_type == "uint8":
            return images
        if output_type == "pil":
            return _to_pil(images)
        raise ValueError(f"output_type must be 'pil' or 'uint8', got {output_type!r}")
