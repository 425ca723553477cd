"""``rcg <verb>``: the argparse front end (layer 5), no logic. A training verb builds its config from ``--preset``
plus flags and prints it; every other verb builds a request (the keyword arguments of one library function).
Then it calls that function; ``--dry-run`` prints the config or request and stops."""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext, redirect_stdout
from dataclasses import is_dataclass

from . import __version__, dist
from . import config as C
from . import presets as P
from . import tree as T
from .official import checkpoint_info, convert, format_info
from .paper import PAPER_PRESETS
from .pixel import GENERATORS
from .serve import serve
from .stages import (cache_reps, demo, fit_folder, interpolate_command, rep_fd, run_eval, sample_command, sample_reps,
                     plot_run, prepare_data, train_encoder, train_evalnet, train_pixel, train_rdm, train_tokenizer)
from .stages.fit import FIT_PRESETS
from .train import Runtime


def _json(obj) -> str:
    return json.dumps(obj, indent=2, default=lambda o: T.to_dict(o) if is_dataclass(o) else str(o))


def _basic(p: argparse.ArgumentParser, device: bool = True, progress: bool = True) -> None:
    if device:
        p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config or request and stop")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", dest="data_kind", choices=["fmnist", "folder", "cifar10", "prepared"],
                   help="data set kind (fmnist: the Debian package's files by default; prepared: a store written "
                        "by rcg prepare-data, streamed)")
    g.add_argument("--data-dir", help="folder with the images / idx files / CIFAR-10 batches / prepared store")
    g.add_argument("--resolution", type=int, help="square size the images are resized/cropped to")
    g.add_argument("--channels", type=int, choices=[1, 3])
    g.add_argument("--limit", type=int, help="use only the first N images")
    g.add_argument("--labels", action="store_true", default=None,
                   help="folders: sub-folder names are class labels (for --class-cond and the kNN monitor); "
                        "folders are unlabelled by default")
    g.add_argument("--eval-dir", help="held-out images (default: 10%% of a folder is held out where a stage "
                                      "needs held-out images)")


def _overrides(a: argparse.Namespace, data_sections=("data",), optim: bool = True, extra=()) -> list:
    """Explicit flags as ``section.key=value`` overrides, then --set, then ``extra`` (the verb's own flags win)."""
    data = (("data_kind", "dataset"), ("data_dir", "path"), ("resolution", "resolution"), ("channels", "channels"),
            ("limit", "limit"), ("labels", "labels"))
    flags = [(sec, flag, key) for sec in data_sections for flag, key in data]
    if "eval_data" in data_sections and getattr(a, "eval_dir", None):
        flags.append(("eval_data", "eval_dir", "path"))       # after --data-dir's, so the held-out folder wins
    flags += [("optim", key, key) for key in ("epochs", "batch_size", "lr", "seed", "bf16", "sample_every", "batch_gpu")
              if optim]
    return ([f"{sec}.{key}={getattr(a, flag)}" for sec, flag, key in flags if getattr(a, flag, None) is not None]
            + list(a.set) + list(extra))


def _train(a, fn, presets: dict, sections=("data", "eval_data"), extra=(), **kw) -> int:
    """A training verb: resolve and print the config, then ``fn(cfg, out, device, ..., **kw)`` unless --dry-run."""
    cfg = C.fit_to_data(T.apply_overrides(presets[a.preset], _overrides(a, sections, extra=extra)))
    print(f"# {a.verb} --preset {a.preset}\n{T.dumps(cfg)}")
    if not a.dry_run:
        fn(cfg, a.out, a.device, progress=not a.no_progress,
           runtime=Runtime(compile=a.compile, tensorboard=a.tensorboard), **kw)
    return 0


def _request(p: argparse.ArgumentParser, fn, names: str, show=None, **computed) -> None:
    """Finish any other verb: call ``fn`` with the keyword arguments in ``names`` ("kw": flag --kw, "kw=dest": flag
    dest, or ``computed[kw](flags)``), print ``show(result)`` (a flag may store another show); --dry-run prints the
    request instead unless ``fn`` takes dry_run. --device / --no-progress exist where ``fn`` takes device / progress."""
    names = [name.partition("=")[::2] for name in names.split()]
    computed = {"progress": lambda a: not a.no_progress, **computed}
    _basic(p, device=("device", "") in names, progress=("progress", "") in names)

    def run(a: argparse.Namespace) -> int:
        kw = {k: computed[k](a) if k in computed else getattr(a, dest or k) for k, dest in names}
        if a.dry_run and "dry_run" not in kw:
            print(_json({"verb": a.verb, "call": ".".join(fn.__module__.split(".")[:2] + [fn.__name__]),
                         "arguments": kw}))
            return 0
        res = fn(**kw)
        if a.show is not None:
            print(a.show(res))
        return 0
    p.set_defaults(func=run, show=show)


def _training(sub, verb: str, help: str, fn, presets: dict, default: str, sections=("data", "eval_data"),
              extra=lambda a: ()):
    p = sub.add_parser(verb, help=help)
    p.add_argument("--preset", default=default, choices=sorted(presets), help=f"named config (default {default})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--out", default=f"runs/{verb[6:]}", help="run directory (rerunning the same command resumes)")
    _basic(p)
    if sections:
        _data_flags(p)
    g = p.add_argument_group("optimization")
    for flag, kind in (("--epochs", float), ("--batch-size", int), ("--lr", float), ("--seed", int)):
        g.add_argument(flag, type=kind)
    g.add_argument("--batch-gpu", type=int, metavar="N",
                   help="rows per forward pass on each device: each process's share of the global batch is split into "
                        "micro-batches whose gradients are accumulated (the same result on fewer or smaller GPUs; "
                        "default: all at once)")
    g.add_argument("--sample-every", type=int, metavar="N",
                   help="write a fixed-seed sample grid to RUN_DIR/samples/step-XXXXXXX.png (and TensorBoard) every N "
                        "steps and at the end (default: with every checkpoint; 0 = none)")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                   help="bf16 autocast: --bf16 forces it, --no-bf16 turns it off; default: the preset's choice, which "
                        "for the CPU and GPU presets is auto: on where the hardware computes bf16 natively (CUDA GPUs "
                        "with bf16, CPUs with AVX-512 BF16 or AMX), fp32 elsewhere (e.g. AVX2-only CPUs, where bf16 "
                        "is emulated and 5-17x slower)")
    g = p.add_argument_group("runtime (does not change the run's config)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model's blocks (slow start)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also log metrics to RUN_DIR/tensorboard (needs the tensorboard package)")
    p.set_defaults(func=lambda a: _train(a, fn, presets, sections, extra(a)))
    return p


def _train_pixel(a) -> int:
    a.preset = a.preset or GENERATORS[a.generator or "mage"].preset
    if a.generator and a.generator != P.PIXEL_PRESETS[a.preset].generator:
        theirs = ", ".join(k for k, v in P.PIXEL_PRESETS.items() if v.generator == a.generator)
        raise ValueError(f"--generator {a.generator} but preset {a.preset} is a "
                         f"{P.PIXEL_PRESETS[a.preset].generator} preset ({a.generator} presets: {theirs})")
    return _train(a, train_pixel, P.PIXEL_PRESETS, (), [f"cache={a.cache}", f"encoder={a.encoder}"]
                  + [f"tokenizer={a.tokenizer}"] * bool(a.tokenizer) + [f"model.cond={a.cond}"] * bool(a.cond),
                  rdm=a.rdm)


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare-data", help="decode a folder (or fmnist / cifar10) once into a store training streams",
                       description="Decode, composite, resize and crop every image of SRC once into OUT (uint8 rows, "
                                   "labels, manifest with checksums); stages read it with --data prepared --data-dir "
                                   "OUT, so memory does not grow with the data set.")
    p.add_argument("src", help="an image folder (recursive), or fmnist / cifar10")
    p.add_argument("out", help="the store folder to write")
    p.add_argument("--resolution", type=int, help="square size (default: 64 for folders, 28 fmnist, 32 cifar10)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="default: 3 for folders and cifar10, 1 for fmnist")
    p.add_argument("--labels", action="store_true", help="folders: sub-folder names are class labels")
    p.add_argument("--split", default="train", help="fmnist / cifar10: which split (train, test)")
    p.add_argument("--data-dir", help="fmnist / cifar10: where their files are (default: the usual place)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images")
    p.add_argument("--verify", action="store_true", help="only recompute an existing store's checksums")
    _request(p, prepare_data, "src out resolution channels labels split data_dir limit progress verify",
             lambda m: f"{m['count']} images in {m['channels']}x{m['resolution']}x{m['resolution']}")


def _add_reps(sub) -> None:
    _training(sub, "train-encoder", "MoCo v3 self-supervised encoder on your images", train_encoder,
              P.ENCODER_PRESETS, "fmnist-encoder")
    p = sub.add_parser("cache-reps", help="representations of K augmented views of every image")
    p.add_argument("--encoder", required=True, help="train-encoder run directory, or an official MoCo v3 .pth.tar")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    p.add_argument("--views", type=int, default=4, help="augmented views per image (default 4)")
    p.add_argument("--tokenizer", help="also store the tokens of the same crops (for train-pixel, MAGE)")
    p.add_argument("--pixels", action="store_true", help="also store the crops as uint8 (for train-pixel, DiT)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast: --bf16 / --no-bf16 force it; default auto (on where the hardware has native "
                        "bf16: about 3x faster on such a CPU; fp32 elsewhere)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override data.* fields")
    _data_flags(p)
    _request(p, cache_reps, "encoder_src=encoder out views data_overrides device seed tokenizer bf16 pixels progress",
             data_overrides=lambda a: _overrides(a, optim=False))

    p = _training(sub, "train-rdm", "representation diffusion model on a representation cache", train_rdm,
                  P.RDM_RUN_PRESETS, "fmnist-rdm", (), lambda a: [f"cache={a.cache}", f"encoder={a.encoder}"]
                  + ["class_cond=true"] * a.class_cond)
    p.add_argument("--cache", required=True, help="file written by rcg cache-reps")
    p.add_argument("--encoder", required=True, help="the encoder that made the cache (checked by fingerprint)")
    p.add_argument("--class-cond", action="store_true", help="class-conditional RDM (needs labels in the cache)")

    p = sub.add_parser("sample-reps", help="sample representations from a trained RDM into a file")
    p.add_argument("--rdm", required=True, help="train-rdm run directory or official RDM .pth")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--steps", type=int, help="DDIM steps (default: the run's)")
    p.add_argument("--eta", type=float, help="DDIM eta (default: the run's)")
    p.add_argument("--solver", choices=C.RDM_SOLVERS,
                   help="ddim (the paper's, with eta), dpm++2m (DPM-Solver++ 2M: deterministic, 10-25 steps) or "
                        "dpm++2m-sde (its stochastic form, 20-25 steps); default: the run's")
    p.add_argument("--class", dest="class_label", type=int, help="class label (class-conditional RDM)")
    p.add_argument("--seed", type=int, default=0,
                   help="representation i uses seed + i (so --num N --seed N gives N new ones)")
    p.add_argument("--batch-size", type=int, default=1000)
    _request(p, sample_reps, "rdm_src=rdm out num steps eta seed label=class_label batch_size device progress solver")

    p = sub.add_parser("rep-fd", help="Fréchet distance between two representation files")
    p.add_argument("a")
    p.add_argument("b")
    _request(p, rep_fd, "a b", _json)


def _sampling(p: argparse.ArgumentParser, paper=None) -> None:
    """The decoding flags; with ``paper`` (a parser or group), also the paper-system flags, there."""
    if paper is not None:
        paper.add_argument("--preset", choices=sorted(PAPER_PRESETS),
                           help="the paper's released system (official files in --weights; or --rdm/--mage FILE)")
        paper.add_argument("--weights", help="folder with the official RDM and MAGE .pth files (for --preset)")
        paper.add_argument("--mage", help="official MAGE .pth (for --preset, instead of finding it in --weights)")
    g = p.add_argument_group("decoding (defaults: the pixel run's)")
    g.add_argument("--steps", type=int, help="decoding / sampling steps")
    g.add_argument("--temperature", type=float, help="choice temperature (annealed linearly to 0)")
    g.add_argument("--guidance", type=float, help="representation guidance tau (0 = off; linear schedule)")
    if paper is not None:
        g.add_argument("--sampler", choices=C.PIXEL_SAMPLERS,
                       help="diffusion generators (DiT, ADM, LDM): ancestral, DDIM, or DPM-Solver++ 2M / its SDE form "
                            "(fast)")
        g.add_argument("--rdm-solver", choices=C.RDM_SOLVERS,
                       help="the RDM's sampler: the paper's DDIM, or DPM-Solver++ 2M / its SDE form "
                            "(e.g. --rdm-steps 20)")
        g.add_argument("--rdm-steps", type=int, help="RDM sampling steps (paper: DDIM 250)")
        g.add_argument("--compile", action="store_true",
                       help="torch.compile the pixel generator's blocks (the same images; compiles first; "
                            "on a Zen 3 CPU no faster than eager: BENCHMARKS.md)")


def _add_generation(sub) -> None:
    _training(sub, "train-tokenizer", "VQ tokenizer (MAGE's VQGAN architecture) on your images", train_tokenizer,
              P.TOKENIZER_PRESETS, "fmnist-tokenizer")
    p = _training(sub, "train-pixel", f"pixel generator ({', '.join(GENERATORS)}) conditioned on representations",
                  train_pixel, P.PIXEL_PRESETS, "fmnist-mage")
    p.add_argument("--generator", choices=list(GENERATORS),
                   help="; ".join(f"{g.about} (preset {g.preset})" for g in GENERATORS.values()) + " (default: mage)")
    p.add_argument("--cache", required=True, help="rcg cache-reps output: with --tokenizer for MAGE, --pixels for DiT")
    p.add_argument("--encoder", required=True, help="the encoder that made the cache")
    p.add_argument("--tokenizer", help="MAGE: the tokenizer that made the cache's tokens; LDM: its first stage")
    p.add_argument("--cond", choices=["rep", "class", "none"], help="rep (RCG, default), class (labels), none")
    p.add_argument("--rdm", help="an RDM run on the same encoder: the sample grids written during training get a "
                                 "row of images from its samples")
    p.set_defaults(preset=None, func=_train_pixel)       # fmnist-mage, or fmnist-dit with --generator dit

    p = sub.add_parser("sample", help="generate images: RDM -> representation -> pixel generator")
    p.add_argument("--pixel", help="train-pixel run directory (or use --preset with the official weights)")
    p.add_argument("--rdm", help="train-rdm run directory (needed unless --reference); official file with --preset")
    p.add_argument("--out", required=True, help="grid .png, .npz, or a folder of PNGs")
    p.add_argument("--num", type=int, default=64, help="images (per reference image with --reference)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reference", nargs="+", help="condition on these images' representations (paper Fig. 6)")
    p.add_argument("--class", dest="class_label", type=int, help="class N, with a class-conditional RDM")
    _sampling(p, paper=p)
    _request(p, sample_command, "pixel rdm out num seed batch_size references=reference label=class_label device "
                                "preset weights mage steps temperature guidance sampler rdm_solver rdm_steps "
                                "compile", str)

    p = sub.add_parser("interpolate", help="a strip of images from mixes of two images' representations")
    p.add_argument("a", help="first image file")
    p.add_argument("b", help="second image file")
    p.add_argument("--pixel", required=True, help="train-pixel run directory")
    p.add_argument("--out", required=True, help="strip .png (or .npz / folder)")
    p.add_argument("--num", type=int, default=11, help="images in the strip, t = 1 ... 0 (default 11)")
    p.add_argument("--seed", type=int, default=0)
    _sampling(p)
    _request(p, interpolate_command, "pixel a b out num seed device steps temperature guidance", str)

    _training(sub, "train-evalnet", "domain classifier whose features give fid_dom / is_dom", train_evalnet,
              P.EVALNET_PRESETS, "fmnist-evalnet")
    p = sub.add_parser("eval", help="FID / IS / precision-recall (and rep FD) of generated images")
    g = p.add_argument_group("generated images (one of)")
    g.add_argument("--npz", help="npz of uint8 images (arr_0: N,H,W,C)")
    g.add_argument("--folder", help="folder of images")
    g.add_argument("--pixel", help="train-pixel run: images are generated and streamed (with --rdm)")
    g.add_argument("--rdm", help="train-rdm run for --pixel")
    g.add_argument("--num", type=int, default=10000, help="generated images for --pixel (default 10000)")
    g.add_argument("--seed", type=int, default=0)
    _sampling(p, paper=g)
    g = p.add_argument_group("feature network (one of)")
    g.add_argument("--inception-weights", help="local pt_inception-2015-12-05-6726825d.pth (torch-fidelity's)")
    g.add_argument("--evalnet", help="rcg train-evalnet run directory (reports fid_dom / is_dom)")
    g = p.add_argument_group("reference")
    g.add_argument("--ref", help="npz of reference statistics (ours, or ADM's mu/sigma)")
    g.add_argument("--ref-data", choices=["fmnist", "folder", "cifar10", "prepared"],
                   help="compute them from this data set (prepared: a store of rcg prepare-data, streamed)")
    g.add_argument("--ref-dir", help="its folder (default location for fmnist)")
    g.add_argument("--ref-split", default="train")
    g.add_argument("--resolution", type=int)
    g.add_argument("--channels", type=int, choices=[1, 3])
    g.add_argument("--ref-cache", help="keep the reference statistics in this npz (computed once)")
    p.add_argument("--rep-reference", help="representation cache for the representation FD (with --pixel)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--json", help="also write the results here")
    _request(p, run_eval, "npz folder pixel rdm num seed preset weights mage guidance temperature steps "
                          "sampler rdm_solver rdm_steps inception_weights evalnet ref ref_data ref_cache "
                          "rep_reference batch_size out_json=json device progress compile", _json,
             ref_data=lambda a: a.ref_data and C.DataConfig(a.ref_data, path=a.ref_dir, split=a.ref_split,
                                                            resolution=a.resolution or 28, channels=a.channels or 1))


def _stage_overrides(items: list) -> dict:
    """``rcg fit --set STAGE.KEY=VALUE`` items as {stage: ["KEY=VALUE", ...]}."""
    over = {}
    for item in items:
        stage, _, kv = item.partition(".")
        if stage not in ("encoder", "tokenizer", "rdm", "pixel") or "=" not in kv:
            raise ValueError(f"--set for rcg fit takes STAGE.KEY=VALUE with STAGE one of encoder, tokenizer, rdm, "
                             f"pixel (e.g. --set pixel.optim.lr=1e-3); got {item!r}")
        over.setdefault(stage, []).append(kv)
    return over


def _add_tools(sub) -> None:
    p = sub.add_parser("info", help="what an official (or our) checkpoint is: kind, architecture, parameters, EMA")
    p.add_argument("file")
    p.add_argument("--num-heads", type=int, help="attention heads (not stored in the weights) if not inferable")
    p.add_argument("--decoder-num-heads", type=int)
    p.add_argument("--ldm-config", help="an LDM's training yaml (heads, latent size; default: the paper's LDM-8)")
    p.add_argument("--json", dest="show", action="store_const", const=_json)       # instead of format_info's text
    _request(p, checkpoint_info, "path_or_dict=file num_heads decoder_num_heads ldm_config", format_info)

    p = sub.add_parser("convert", help="official checkpoint -> our run directory (safetensors + config.json)")
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--num-heads", type=int)
    p.add_argument("--decoder-num-heads", type=int)
    p.add_argument("--resolution", type=int, help="image size of a VQGAN file (not stored in it; default 256)")
    p.add_argument("--ldm-config", help="an LDM's training yaml (heads, latent size; default: the paper's LDM-8)")
    _request(p, convert, "path_or_dict=file out_dir=out num_heads decoder_num_heads resolution ldm_config", _json)

    p = sub.add_parser("fit", help="one command from a folder of images to a trained RCG system",
                       description="Train every stage on the images under FOLDER (recursive; unlabelled unless "
                                   "--labels) into RUN: RUN/samples.png, references.png, interpolation.png, "
                                   "summary.json. Rerunning the same command resumes.")
    p.add_argument("folder", help="folder of images (png/jpg/jpeg/webp/bmp, any sizes and modes)")
    p.add_argument("--out", required=True, help="run directory RUN (each stage's run directory goes inside it)")
    p.add_argument("--preset", default="quick", choices=sorted(FIT_PRESETS),
                   help="budget: quick (a CPU preview: ~15 min on 2 cores for up to 10k images at 32 px) or "
                        "standard (one GPU); budgets count images seen, not epochs")
    p.add_argument("--resolution", type=int, help="square image size (default: from the images' sizes, "
                                                  "rounded down to 32 / 64 / 128 / 256)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="default: 3 unless every image is grayscale")
    p.add_argument("--labels", action="store_true", help="sub-folder names are class labels (kNN monitor)")
    p.add_argument("--encoder", help="reuse this encoder (a train-encoder run directory or an official MoCo v3 "
                                     ".pth.tar) instead of training one")
    p.add_argument("--generator", default="mage", choices=list(FIT_PRESETS["quick"].pixel))
    p.add_argument("--inception-weights", help="also report Inception FID (local pt_inception-2015-12-05 file)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override a stage's config, e.g. --set pixel.optim.lr=1e-3 (repeatable)")
    _request(p, fit_folder, "data_dir=folder out preset resolution channels labels encoder generator "
                            "inception_weights device progress overrides dry_run",
             overrides=lambda a: _stage_overrides(a.set))

    p = sub.add_parser("plot", help="loss, learning rate and every logged metric over steps -> RUN/curves.png",
                       description="Plot RUN/metrics.jsonl (a training run) or every stage's metrics (an rcg fit "
                                   "run) to one PNG. Needs matplotlib: pip install -e '.[plot]'.")
    p.add_argument("run", help="a training run directory (or an rcg fit run)")
    p.add_argument("--out", help="the PNG to write (default RUN/curves.png)")
    _request(p, plot_run, "run out", str)

    p = sub.add_parser("serve", help="a web playground for a trained system on 127.0.0.1 (pip install -e '.[serve]')",
                       description="Serve a page for sampling, variations of an uploaded image and interpolation "
                                   "between two, on http://HOST:PORT/. One request at a time per model; others wait.")
    p.add_argument("path", help="an rcg fit run, a saved pipeline folder, or a train-pixel run (with --rdm)")
    p.add_argument("--rdm", help="train-rdm run directory (with a train-pixel run as PATH)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                   help="compute precision (default: the runs' own, fp32; auto: bf16 where native)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload (default 10 MB)")
    _request(p, serve, "path rdm host port device dtype max_upload_mb")

    p = sub.add_parser("demo", help="every stage on Fashion-MNIST with CPU presets")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--encoder", help="use this encoder (run dir or official file) instead of the shipped one")
    p.add_argument("--train-encoder", action="store_true", help="train a new encoder first (about an hour on 2 cores)")
    _request(p, demo, "out encoder train_new_encoder=train_encoder device progress")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rcg", description="Representation-conditioned image generation (RCG).")
    ap.add_argument("--version", action="version", version=f"rcg {__version__}")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in (_add_prepare, _add_reps, _add_generation, _add_tools):
        add(sub)
    return ap


def main(argv=None) -> int:
    """Run one verb. Under ``torchrun`` every process runs it: they join one process group here, and only
    rank 0 prints to stdout (errors go to stderr from every rank)."""
    a = build_parser().parse_args(argv)
    try:
        dist.init()
        with open(os.devnull, "w") if not dist.is_main() else nullcontext(sys.stdout) as out, redirect_stdout(out):
            return a.func(a)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, KeyError, RuntimeError, FileNotFoundError, OSError) as e:
        who = f" (rank {dist.rank()})" if dist.world_size() > 1 else ""
        print(f"error{who}: {e}", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(main())
