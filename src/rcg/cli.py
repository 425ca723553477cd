"""``rcg <verb>``: the argparse front end (layer 5), no logic. A training verb builds its config from ``--preset``
plus flags and prints it; every other verb builds a request (the keyword arguments of one library function).
Then it calls that function; ``--dry-run`` prints the config or request and stops."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import is_dataclass

from . import __version__, dist
from . import config as C
from . import presets as P
from . import tree as T
from .official import checkpoint_info, convert, format_info
from .paper import PAPER_PRESETS
from .pixel import GENERATORS
from .stages import (cache_reps, demo, fit_folder, interpolate_command, rep_fd, run_eval, sample_command, sample_reps,
                     train_encoder, train_evalnet, train_pixel, train_rdm, train_tokenizer)
from .stages.fit import FIT_PRESETS
from .train import Runtime

BF16_HELP = ("bf16 autocast: --bf16 forces it, --no-bf16 turns it off; default: the preset's choice, which for the "
             "CPU and GPU presets is auto: on where the hardware computes bf16 natively (CUDA GPUs with bf16, CPUs "
             "with AVX-512 BF16 or AMX), fp32 elsewhere (e.g. AVX2-only CPUs, where bf16 is emulated and 5-17x slower)")


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
    g.add_argument("--data", dest="data_kind", choices=["fmnist", "folder", "cifar10"],
                   help="data set kind (fmnist: the Debian package's files by default)")
    g.add_argument("--data-dir", help="folder with the images / idx files / CIFAR-10 batches")
    g.add_argument("--resolution", type=int, help="square size the images are resized/cropped to")
    g.add_argument("--channels", type=int, choices=[1, 3])
    g.add_argument("--limit", type=int, help="use only the first N images")
    g.add_argument("--labels", action="store_true", default=None,
                   help="folders: sub-folder names are class labels (for --class-cond and the kNN monitor); "
                        "folders are unlabelled by default")
    g.add_argument("--eval-dir", help="held-out images (default: 10%% of a folder is held out where a stage "
                                      "needs held-out images)")


def _overrides(a: argparse.Namespace, data_sections=("data",), optim: bool = True, extra=()) -> list:
    """Explicit flags as ``section.key=value`` overrides, then ``extra``, then --set."""
    out = []
    for sec in data_sections:
        for flag, key in (("data_kind", "dataset"), ("data_dir", "path"), ("resolution", "resolution"),
                          ("channels", "channels"), ("limit", "limit"), ("labels", "labels")):
            v = getattr(a, flag, None)
            if sec == "eval_data" and flag == "data_dir" and getattr(a, "eval_dir", None):
                v = a.eval_dir
            if v is not None:
                out.append(f"{sec}.{key}={v}")
    for key in ("epochs", "batch_size", "lr", "seed", "bf16") if optim else ():
        if getattr(a, key, None) is not None:
            out.append(f"optim.{key}={getattr(a, key)}")
    return out + list(extra) + list(a.set)


def _train(a, fn, presets: dict, sections=("data", "eval_data"), extra=()) -> int:
    """A training verb: resolve and print the config, then ``fn(cfg, out, device, ...)`` unless --dry-run."""
    cfg = C.fit_to_data(T.apply_overrides(presets[a.preset], _overrides(a, sections, extra=extra)))
    print(f"# {a.verb} --preset {a.preset}\n{T.dumps(cfg)}")
    if not a.dry_run:
        fn(cfg, a.out, a.device, progress=not a.no_progress,
           runtime=Runtime(compile=a.compile, tensorboard=a.tensorboard))
    return 0


def _call(ns, fn, show=None, /, **kw) -> int:
    """Any other verb: print the request on --dry-run (a function taking ``dry_run`` does that itself), else call
    ``fn(**kw)`` and print ``show(result)``."""
    if ns.dry_run and "dry_run" not in kw:
        print(_json({"verb": ns.verb, "call": ".".join(fn.__module__.split(".")[:2] + [fn.__name__]), "arguments": kw}))
        return 0
    res = fn(**kw)
    if show is not None:
        print(show(res))
    return 0


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
    g.add_argument("--epochs", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help=BF16_HELP)
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
                  + [f"tokenizer={a.tokenizer}"] * bool(a.tokenizer) + [f"model.cond={a.cond}"] * bool(a.cond))


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
    _basic(p)
    _data_flags(p)
    p.set_defaults(func=lambda a: _call(
        a, cache_reps, encoder_src=a.encoder, out=a.out, views=a.views, data_overrides=_overrides(a, optim=False),
        device=a.device, seed=a.seed, tokenizer=a.tokenizer, bf16=a.bf16, pixels=a.pixels,
        progress=not a.no_progress))

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
    p.add_argument("--class", dest="class_label", type=int, help="class label (class-conditional RDM)")
    p.add_argument("--seed", type=int, default=0,
                   help="representation i uses seed + i (so --num N --seed N gives N new ones)")
    p.add_argument("--batch-size", type=int, default=1000)
    _basic(p)
    p.set_defaults(func=lambda a: _call(
        a, sample_reps, rdm_src=a.rdm, out=a.out, num=a.num, steps=a.steps, eta=a.eta, seed=a.seed,
        label=a.class_label, batch_size=a.batch_size, device=a.device, progress=not a.no_progress))

    p = sub.add_parser("rep-fd", help="Fréchet distance between two representation files")
    p.add_argument("a")
    p.add_argument("b")
    _basic(p, device=False, progress=False)
    p.set_defaults(func=lambda a: _call(a, rep_fd, _json, a=a.a, b=a.b))


def _paper_flags(p) -> None:
    p.add_argument("--preset", choices=sorted(PAPER_PRESETS),
                   help="the paper's released system (official files in --weights; or --rdm/--mage FILE)")
    p.add_argument("--weights", help="folder with the official RDM and MAGE .pth files (for --preset)")
    p.add_argument("--mage", help="official MAGE .pth (for --preset, instead of finding it in --weights)")


def _sampling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (defaults: the pixel run's)")
    g.add_argument("--steps", type=int, help="decoding / sampling steps")
    g.add_argument("--temperature", type=float, help="choice temperature (annealed linearly to 0)")
    g.add_argument("--guidance", type=float, help="representation guidance tau (0 = off; linear schedule)")


def _add_generation(sub) -> None:
    _training(sub, "train-tokenizer", "VQ tokenizer (MAGE's VQGAN architecture) on your images", train_tokenizer,
              P.TOKENIZER_PRESETS, "fmnist-tokenizer")
    p = _training(sub, "train-pixel", "pixel generator (MAGE or DiT) conditioned on representations", train_pixel,
                  P.PIXEL_PRESETS, "fmnist-mage")
    p.add_argument("--generator", choices=list(GENERATORS),
                   help="mage (VQ tokens; default) or dit (pixels; default preset fmnist-dit)")
    p.add_argument("--cache", required=True, help="rcg cache-reps output: with --tokenizer for MAGE, --pixels for DiT")
    p.add_argument("--encoder", required=True, help="the encoder that made the cache")
    p.add_argument("--tokenizer", help="MAGE: the tokenizer that made the cache's tokens")
    p.add_argument("--cond", choices=["rep", "class", "none"], help="rep (RCG, default), class (labels), none")
    p.set_defaults(preset=None, func=_train_pixel)       # fmnist-mage, or fmnist-dit with --generator dit

    p = sub.add_parser("sample", help="generate images: RDM -> representation -> pixel generator")
    p.add_argument("--pixel", help="train-pixel run directory (or use --preset with the official weights)")
    p.add_argument("--rdm", help="train-rdm run directory (needed unless --reference); official file with --preset")
    _paper_flags(p)
    p.add_argument("--out", required=True, help="grid .png, .npz, or a folder of PNGs")
    p.add_argument("--num", type=int, default=64, help="images (per reference image with --reference)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reference", nargs="+", help="condition on these images' representations (paper Fig. 6)")
    p.add_argument("--class", dest="class_label", type=int, help="class N, with a class-conditional RDM")
    _sampling(p)
    _basic(p, progress=False)
    p.set_defaults(func=lambda a: _call(
        a, sample_command, str, pixel=a.pixel, rdm=a.rdm, out=a.out, num=a.num, seed=a.seed,
        batch_size=a.batch_size, references=a.reference, label=a.class_label, device=a.device, preset=a.preset,
        weights=a.weights, mage=a.mage, steps=a.steps, temperature=a.temperature, guidance=a.guidance))

    p = sub.add_parser("interpolate", help="a strip of images from mixes of two images' representations")
    p.add_argument("a", help="first image file")
    p.add_argument("b", help="second image file")
    p.add_argument("--pixel", required=True, help="train-pixel run directory")
    p.add_argument("--out", required=True, help="strip .png (or .npz / folder)")
    p.add_argument("--num", type=int, default=11, help="images in the strip, t = 1 ... 0 (default 11)")
    p.add_argument("--seed", type=int, default=0)
    _sampling(p)
    _basic(p, progress=False)
    p.set_defaults(func=lambda a: _call(
        a, interpolate_command, str, pixel=a.pixel, a=a.a, b=a.b, out=a.out, num=a.num, seed=a.seed,
        device=a.device, steps=a.steps, temperature=a.temperature, guidance=a.guidance))


def _add_eval(sub) -> None:
    _training(sub, "train-evalnet", "domain classifier whose features give fid_dom / is_dom", train_evalnet,
              P.EVALNET_PRESETS, "fmnist-evalnet")
    p = sub.add_parser("eval", help="FID / IS / precision-recall (and rep FD) of generated images")
    g = p.add_argument_group("generated images (one of)")
    g.add_argument("--npz", help="npz of uint8 images (arr_0: N,H,W,C)")
    g.add_argument("--folder", help="folder of images")
    g.add_argument("--pixel", help="train-pixel run: images are generated and streamed (with --rdm)")
    _paper_flags(g)
    g.add_argument("--rdm", help="train-rdm run for --pixel")
    g.add_argument("--num", type=int, default=10000, help="generated images for --pixel (default 10000)")
    g.add_argument("--seed", type=int, default=0)
    _sampling(p)
    g = p.add_argument_group("feature network (one of)")
    g.add_argument("--inception-weights", help="local pt_inception-2015-12-05-6726825d.pth (torch-fidelity's)")
    g.add_argument("--evalnet", help="rcg train-evalnet run directory (reports fid_dom / is_dom)")
    g = p.add_argument_group("reference")
    g.add_argument("--ref", help="npz of reference statistics (ours, or ADM's mu/sigma)")
    g.add_argument("--ref-data", choices=["fmnist", "folder", "cifar10"], help="compute them from this data set")
    g.add_argument("--ref-dir", help="its folder (default location for fmnist)")
    g.add_argument("--ref-split", default="train")
    g.add_argument("--resolution", type=int)
    g.add_argument("--channels", type=int, choices=[1, 3])
    g.add_argument("--ref-cache", help="keep the reference statistics in this npz (computed once)")
    p.add_argument("--rep-reference", help="representation cache for the representation FD (with --pixel)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--json", help="also write the results here")
    _basic(p)
    p.set_defaults(func=lambda a: _call(
        a, run_eval, _json, npz=a.npz, folder=a.folder, pixel=a.pixel, rdm=a.rdm, num=a.num, seed=a.seed,
        preset=a.preset, weights=a.weights, mage=a.mage, guidance=a.guidance, temperature=a.temperature,
        steps=a.steps, inception_weights=a.inception_weights, evalnet=a.evalnet, ref=a.ref,
        ref_data=a.ref_data and C.DataConfig(a.ref_data, path=a.ref_dir, split=a.ref_split,
                                             resolution=a.resolution or 28, channels=a.channels or 1, labels=False),
        ref_cache=a.ref_cache, rep_reference=a.rep_reference, batch_size=a.batch_size, out_json=a.json,
        device=a.device, progress=not a.no_progress))


def _add_official(sub) -> None:
    p = sub.add_parser("info", help="what an official (or our) checkpoint is: kind, architecture, parameters, EMA")
    p.add_argument("file")
    p.add_argument("--num-heads", type=int, help="attention heads (not stored in the weights) if not inferable")
    p.add_argument("--decoder-num-heads", type=int)
    p.add_argument("--json", action="store_true")
    _basic(p, device=False, progress=False)
    p.set_defaults(func=lambda a: _call(a, checkpoint_info, _json if a.json else format_info, path_or_dict=a.file,
                                        num_heads=a.num_heads, decoder_num_heads=a.decoder_num_heads))

    p = sub.add_parser("convert", help="official checkpoint -> our run directory (safetensors + config.json)")
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--num-heads", type=int)
    p.add_argument("--decoder-num-heads", type=int)
    p.add_argument("--resolution", type=int, help="image size of a VQGAN file (not stored in it; default 256)")
    _basic(p, device=False, progress=False)
    p.set_defaults(func=lambda a: _call(a, convert, _json, path_or_dict=a.file, out_dir=a.out, num_heads=a.num_heads,
                                        decoder_num_heads=a.decoder_num_heads, resolution=a.resolution))


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


def _add_systems(sub) -> None:
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
    p.add_argument("--generator", default="mage", choices=list(GENERATORS))
    p.add_argument("--inception-weights", help="also report Inception FID (local pt_inception-2015-12-05 file)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override a stage's config, e.g. --set pixel.optim.lr=1e-3 (repeatable)")
    _basic(p)
    p.set_defaults(func=lambda a: _call(
        a, fit_folder, data_dir=a.folder, out=a.out, preset=a.preset, resolution=a.resolution, channels=a.channels,
        labels=a.labels, encoder=a.encoder, generator=a.generator, inception_weights=a.inception_weights,
        device=a.device, progress=not a.no_progress, overrides=_stage_overrides(a.set), dry_run=a.dry_run))

    p = sub.add_parser("demo", help="every stage on Fashion-MNIST with CPU presets")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--encoder", help="use this encoder (run dir or official file) instead of the shipped one")
    p.add_argument("--train-encoder", action="store_true", help="train a new encoder first (about an hour on 2 cores)")
    _basic(p)
    p.set_defaults(func=lambda a: _call(a, demo, out=a.out, encoder=a.encoder, train_new_encoder=a.train_encoder,
                                        device=a.device, progress=not a.no_progress))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rcg", description="Representation-conditioned image generation (RCG).")
    ap.add_argument("--version", action="version", version=f"rcg {__version__}")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in (_add_reps, _add_generation, _add_eval, _add_official, _add_systems):
        add(sub)
    return ap


def main(argv=None) -> int:
    """Run one verb. Under ``torchrun`` every process runs it: they join one process group here, and only
    rank 0 prints to stdout (errors go to stderr from every rank)."""
    a = build_parser().parse_args(argv)
    stdout, who = sys.stdout, ""
    try:
        dist.init()
        if dist.world_size() > 1:
            who = f" (rank {dist.rank()})"
            if not dist.is_main():
                sys.stdout = open(os.devnull, "w")
        return a.func(a)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, KeyError, RuntimeError, FileNotFoundError, OSError) as e:
        print(f"error{who}: {e}", file=sys.stderr)
        return 2
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(main())
