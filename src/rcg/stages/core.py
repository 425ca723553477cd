"""The library functions behind the CLI verbs: each builds the pieces of one stage and runs it.

Stages hand their weights to each other through run directories (``config.json`` +
``checkpoint.safetensors``); nothing is found by magic paths.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch

from .. import augment, dist
from ..store import WEIGHTS, CheckpointError, load_tensors, prepare_run_dir, read_config, save_tensors
from ..config import EncoderRun, fit_to_data
from ..tree import from_dict, to_dict
from ..data import ImageSet, load_dataset
from ..encoders import Encoder, fingerprint
from ..evaluate import knn_accuracy
from ..precision import describe as describe_precision
from ..precision import resolve_bf16
from ..ssl import MoCoV3, momentum_at
from ..store import METRICS
from ..train import EpochBatches, Job, append_metrics, fit


def setup_torch(device: Optional[str] = None, num_threads: int = 0) -> torch.device:
    """Join the torchrun process group if any, pick the device (CUDA when present: this process's GPU under
    torchrun), flush denormals on CPU, enable TF32 on CUDA."""
    dist.init()
    dev = dist.device(device)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    if dev.type == "cpu":
        torch.set_flush_denormal(True)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


@torch.no_grad()
def encode_images(encoder: Encoder, images: torch.Tensor, batch_size: int = 500, features: bool = False,
                  bf16: bool = False) -> torch.Tensor:
    """Standardized representations (or backbone features) of uint8 images, in float32 on the CPU."""
    encoder.eval()
    dev = next(encoder.parameters()).device
    out = []
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(dev)
        with ctx:
            out.append((encoder.features(x) if features else encoder.encode(x)).float().cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------
# train-encoder
# ------------------------------------------------------------------------------------------------
def _eval_set(cfg: EncoderRun) -> Optional[ImageSet]:
    """Labelled held-out data for the kNN monitor, or None when there are no labels."""
    try:
        ev = load_dataset(cfg.eval_data)
    except Exception as e:  # a missing test split must not stop training
        print(f"kNN monitor off: {e}")
        return None
    return ev if ev.labels is not None else None


def knn_eval(encoder: Encoder, train: ImageSet, test: ImageSet, cfg: EncoderRun, full: bool, bf16: bool) -> dict:
    """kNN top-1 of the representation (and of the backbone features) on held-out data."""
    nb = len(train) if full or not cfg.knn.bank else min(cfg.knn.bank, len(train))
    nq = len(test) if full or not cfg.knn.queries else min(cfg.knn.queries, len(test))
    out = {}
    for name, feats in (("knn_rep", False), ("knn_backbone", True)):
        a = encode_images(encoder, train.images[:nb], features=feats, bf16=bf16)
        b = encode_images(encoder, test.images[:nq], features=feats, bf16=bf16)
        out[name] = knn_accuracy(a, train.labels[:nb], b, test.labels[:nq], k=cfg.knn.k,
                                 temperature=cfg.knn.temperature)
    out.update(knn_bank=nb, knn_queries=nq)
    return out


def train_encoder(cfg: EncoderRun, out: str, device: Optional[str] = None, progress: bool = True) -> dict:
    """MoCo v3 pretraining on ``cfg.data``; writes the encoder run directory ``out``."""
    cfg = fit_to_data(cfg)
    dev = setup_torch(device, cfg.optim.num_threads)
    data = load_dataset(cfg.data)                 # every check on the input before the run directory is touched
    print(f"data: {data.source}: {len(data)} images {tuple(data.images.shape[1:])}")
    if data.images.shape[1] != cfg.encoder.in_chans:
        raise ValueError(f"encoder.in_chans={cfg.encoder.in_chans} but the data has {data.images.shape[1]} channels; "
                         f"set data.channels or encoder.in_chans")
    evalset = _eval_set(cfg) if data.labels is not None or cfg.eval_data.dataset != "folder" else None
    if evalset is None and data.labels is not None:
        print("kNN monitor off: no labelled held-out images")
    run_dir, resuming = prepare_run_dir(out, to_dict(cfg))
    torch.manual_seed(cfg.optim.seed)
    encoder = Encoder(cfg.encoder)
    model = MoCoV3(encoder, pred_dim=cfg.pred_dim, temperature=cfg.temperature).to(dev)
    channels_last = cfg.encoder.arch == "resnet"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = data.images.to(dev)
    batches = EpochBatches(len(images), cfg.optim.batch_size, cfg.optim.seed)
    total = max(1, int(round(cfg.optim.epochs * batches.steps_per_epoch)))
    crop = cfg.crop_size or cfg.data.resolution

    def loss_fn(step, gen, part):
        # views of the whole global batch (their randomness is per image), then this process's rows
        x = images[batches(step).to(dev)].float() / 255.0
        v1 = augment.ssl_view(x, crop, cfg.view1, gen)[part]
        v2 = augment.ssl_view(x, crop, cfg.view2, gen)[part]
        if channels_last:
            v1, v2 = (v.contiguous(memory_format=torch.channels_last) for v in (v1, v2))
        m = momentum_at(step / total, cfg.momentum)
        return model(v1, v2, m), {"momentum": m}

    def evaluate(step):
        res = knn_eval(encoder, data, evalset, cfg, full=False, bf16=resolve_bf16(cfg.optim.bf16, dev))
        print(f"step {step}: kNN top-1 rep {res['knn_rep']:.4f}, backbone {res['knn_backbone']:.4f} "
              f"({res['knn_queries']} held-out vs {res['knn_bank']} train)")
        return res

    every = int(cfg.knn.every_epochs * batches.steps_per_epoch) if evalset is not None else 0
    job = Job(model=model, loss_fn=loss_fn, steps_per_epoch=batches.steps_per_epoch, total_steps=total,
              images_per_step=cfg.optim.batch_size, export=lambda: encoder.state_dict(),
              evaluate=evaluate if evalset is not None else None, eval_every=every, desc="train-encoder",
              sharded=True)
    t0 = time.time()
    last = fit(run_dir, job, cfg.optim, resuming, progress)
    if not dist.is_main():
        return last
    summary = {"stage": "encoder", "steps": total, "train_wall_s": round(time.time() - t0, 1), **last}
    enc = load_encoder(run_dir, dev)
    summary["fingerprint"] = fingerprint(enc)
    if evalset is not None:
        summary.update(knn_eval(enc, data, evalset, cfg, full=True, bf16=False))
        append_metrics(run_dir / METRICS, {"step": total, "final": True, **{k: v for k, v in summary.items()
                                                                             if k.startswith("knn")}})
        print(f"final kNN top-1 (k={cfg.knn.k}, {summary['knn_queries']} held-out images): "
              f"representation {summary['knn_rep']:.4f}, backbone {summary['knn_backbone']:.4f}")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_encoder(source, device=None) -> Encoder:
    """An encoder from a ``train-encoder`` run directory, or from an official MoCo v3 checkpoint file."""
    src = Path(source)
    if src.is_file():
        from ..official import mocov3_from_official
        enc, _ = mocov3_from_official(src)
    else:
        cfg = from_dict(EncoderRun, read_config(src))
        enc = Encoder(cfg.encoder)
        tensors, _ = load_tensors(src / WEIGHTS)
        enc.load_state_dict(tensors)
    enc.requires_grad_(False)
    return enc.eval().to(device or "cpu")


# ------------------------------------------------------------------------------------------------
# cache-reps
# ------------------------------------------------------------------------------------------------
REPS_KIND = "rcg-reps"


def cache_reps(encoder_src, out, views: int = 4, data_overrides=(), device=None, seed: int = 0,
               batch_size: int = 500, scale=(0.8, 1.0), tokenizer=None, bf16: Optional[bool] = None,
               pixels: bool = False, progress: bool = True) -> dict:
    """Standardized representations of ``views`` crop+flip views of every image, written atomically to
    ``out`` (safetensors: ``reps`` (N*views, D), ``image_index``, ``labels`` when known) together with
    the encoder's fingerprint. With ``tokenizer`` (a train-tokenizer run dir or official VQGAN file) the
    tokens of the very same crops are stored too (``tokens`` (N*views, L)), for MAGE training; with
    ``pixels`` the crops themselves (``images`` uint8 (N*views, C, H, W)), for DiT training.
    The data default to the encoder run's own training data. ``bf16``: autocast the encoder and tokenizer
    (True / False; None = auto, where the hardware has native bf16: about 3x faster on such a CPU;
    standardized representations then differ by ~3e-3 on average)."""
    from contextlib import nullcontext
    from tqdm.auto import tqdm
    from ..config import DataConfig
    from ..tree import apply_overrides

    if views < 1:
        raise ValueError(f"--views must be at least 1, got {views}")
    dev = setup_torch(device)
    encoder = load_encoder(encoder_src, dev)
    src = Path(encoder_src)
    base = from_dict(EncoderRun, read_config(src)).data if src.is_dir() else DataConfig("folder", channels=3)
    data_cfg = apply_overrides(base, [o.split(".", 1)[1] if o.startswith("data.") else o for o in data_overrides])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    data = load_dataset(data_cfg)
    fp = fingerprint(encoder)
    tok = load_tokenizer(tokenizer, dev) if tokenizer is not None else None
    channels_last = encoder.cfg.arch == "resnet"
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    print(f"cache-reps: precision {describe_precision(bf16, dev)}")
    bf16 = resolve_bf16(bf16, dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    n = len(data)
    reps, tokens, crops = [], [], []
    bar = tqdm(total=n * views, unit="img", unit_scale=True, desc="cache-reps", disable=not progress)
    for v in range(views):
        for i in range(0, n, batch_size):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + v * 100_003 + i)
            x = data.images[i:i + batch_size].float().div(255.0)
            x = augment.crop_flip(x, data.images.shape[-1], scale=scale, gen=gen).to(dev)
            if pixels:
                x = x.mul(255).round().div(255)             # the model sees exactly the stored uint8 crop
                crops.append(x.mul(255).round().to(torch.uint8).cpu())
            with torch.no_grad(), autocast:
                xe = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                reps.append(encoder.encode(xe).float().cpu())
                if tok is not None:
                    tokens.append(tok.encode(x)[1].to(torch.int16 if tok.cfg.n_embed < 2 ** 15 else torch.int64).cpu())
            bar.update(len(x))
    bar.close()
    tensors = {"reps": torch.cat(reps), "image_index": torch.arange(n).repeat(views)}
    if data.labels is not None:
        tensors["labels"] = data.labels.repeat(views)
    meta = {"kind": REPS_KIND, "encoder": str(encoder_src), "encoder_fingerprint": fp, "views": views, "bf16": bf16,
            "precision": "bf16" if bf16 else "fp32",
            "data": data.source, "resolution": data.images.shape[-1],
            "num_classes": len(data.class_names) if data.class_names else 0}
    if pixels:
        tensors["images"] = torch.cat(crops)
    if tok is not None:
        tensors["tokens"] = torch.cat(tokens)
        meta.update(tokenizer=str(tokenizer), tokenizer_fingerprint=fingerprint(tok), codebook_size=tok.cfg.n_embed)
    save_tensors(out, tensors, meta)
    print(f"wrote {out}: {tuple(tensors['reps'].shape)} representations ({n} images x {views} views), "
          f"encoder {fp}")
    return meta


def load_reps(path, expect_fingerprint: Optional[str] = None, encoder_name: str = ""):
    """(tensors, metadata) of a representation file; refuses one made by another encoder."""
    tensors, meta = load_tensors(path)
    if "reps" not in tensors:
        raise CheckpointError(f"{path} holds no 'reps' tensor; make it with rcg cache-reps or rcg sample-reps")
    if expect_fingerprint is not None and meta.get("encoder_fingerprint") != expect_fingerprint:
        raise CheckpointError(
            f"{path} was made by another encoder (fingerprint {meta.get('encoder_fingerprint')}, "
            f"from {meta.get('encoder', '?')}) than {encoder_name} (fingerprint {expect_fingerprint}). "
            f"Rebuild it: rcg cache-reps --encoder {encoder_name} --out {path}")
    return tensors, meta


# ------------------------------------------------------------------------------------------------
# train-rdm, sample-reps, rep-fd
# ------------------------------------------------------------------------------------------------
def train_rdm(cfg, out: str, device: Optional[str] = None, progress: bool = True) -> dict:
    """Train the RDM on a representation cache; ends with the representation FD check."""
    from dataclasses import replace
    from ..diffusion import GaussianDiffusion
    from ..rdm import RDM

    if not cfg.cache or not cfg.encoder:
        raise ValueError("train-rdm needs --cache (from rcg cache-reps) and --encoder (the encoder that made it)")
    dev = setup_torch(device, cfg.optim.num_threads)
    fp = fingerprint(load_encoder(cfg.encoder))
    tensors, meta = load_reps(cfg.cache, fp, cfg.encoder)
    reps = tensors["reps"].float()
    labels = tensors.get("labels")
    model_cfg = replace(cfg.model, in_channels=reps.shape[1])
    if cfg.class_cond:
        if labels is None:
            raise ValueError(f"--class-cond needs labels, but {cfg.cache} has none (unlabelled data)")
        model_cfg = replace(model_cfg, num_classes=int(meta.get("num_classes") or int(labels.max()) + 1))
    else:
        model_cfg = replace(model_cfg, num_classes=0)
    cfg = replace(cfg, model=model_cfg)
    run_dir, resuming = prepare_run_dir(out, {**to_dict(cfg), "encoder_fingerprint": fp})
    torch.manual_seed(cfg.optim.seed)
    model = RDM(model_cfg).to(dev)
    diffusion = GaussianDiffusion(**to_dict(cfg.diffusion)).to(dev)
    reps_d = reps.to(dev)
    labels_d = labels.to(dev) if (labels is not None and cfg.class_cond) else None
    batches = EpochBatches(len(reps), cfg.optim.batch_size, cfg.optim.seed)
    total = max(1, int(round(cfg.optim.epochs * batches.steps_per_epoch)))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"RDM: {n_params:,} parameters; {len(reps)} representations of dim {reps.shape[1]}; {total} steps")

    def loss_fn(step, gen, part):
        idx = batches(step)
        t = torch.randint(0, diffusion.num_steps, (len(idx),), generator=gen)[part].to(dev)   # global batch,
        noise = torch.randn((len(idx),) + reps.shape[1:], generator=gen)[part].to(dev)      # this process's rows
        idx = idx[part].to(dev)
        y = labels_d[idx] if labels_d is not None else None
        return diffusion.loss(lambda xt, tt: model(xt, tt, y), reps_d[idx], t, noise), {}

    job = Job(model=model, loss_fn=loss_fn, steps_per_epoch=batches.steps_per_epoch, total_steps=total,
              images_per_step=cfg.optim.batch_size, export=lambda: model.state_dict(), desc="train-rdm",
              metadata={"encoder_fingerprint": fp}, sharded=True)
    t0 = time.time()
    last = fit(run_dir, job, cfg.optim, resuming, progress)
    if not dist.is_main():
        return last
    summary = {"stage": "rdm", "params": n_params, "steps": total, "train_wall_s": round(time.time() - t0, 1), **last}
    summary.update(rep_fd_check(run_dir, reps, labels if cfg.class_cond else None, cfg, dev, progress,
                                image_index=tensors.get("image_index")))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


FLOOR_SUBSETS = 200   # real subsets averaged for the rep-FD floor (10k of 240k: ~12 s on 2 cores)
FLOOR_SPLITS = 20     # random image-disjoint splits averaged for the floor of a small cache ("halves")


def rep_fd_check(run_dir, reps: torch.Tensor, labels, cfg, dev, progress: bool, image_index=None) -> dict:
    """Paper Table 8's rep FD of ``cfg.fd_samples`` sampled representations against a floor computed from real
    ones (:func:`rcg.evaluate.rep_fd_plan` picks the protocol). With N >= SUBSETS_MIN_RATIO m real
    representations ("subsets"): m samples vs all N, floor = m-subsets of the real set vs all of it (mean +-
    std over ``FLOOR_SUBSETS`` subsets: one subset's FD varies by about 20 %). On a smaller cache ("halves"):
    the real set is split by source image (``image_index``, the cache's row -> image map; rows when None)
    into a held-out half A and a reference half B; m samples vs B, floor = m real of A vs B (mean +- std over
    ``FLOOR_SPLITS`` splits), so a perfect model's ratio is ~1. Class-conditional samples take the labels of m
    random real rows of the set they are compared with."""
    from ..evaluate import fd_between, rep_fd_plan
    seed = cfg.optim.seed + 17
    plan = rep_fd_plan(reps, cfg.fd_samples, image_index, seed=seed, subsets=FLOOR_SUBSETS, splits=FLOOR_SPLITS)
    m, floor, protocol = plan["samples"], plan["floor"], plan["protocol"]
    y = labels[plan["pick"]] if labels is not None else None
    t0 = time.time()
    sampled = sample_reps(run_dir, None, num=m, labels=y, device=dev, progress=progress)["reps"]
    wall = round(time.time() - t0, 1)
    reference = reps if plan["reference"] is None else reps[plan["reference"]]
    fd = fd_between(sampled, reference)
    ratio = fd / floor["mean"] if floor["mean"] > 0 else float("nan")
    res = {"rep_fd": fd, "rep_fd_floor": floor["mean"], "rep_fd_floor_std": floor["std"],
           "rep_fd_floor_subsets": plan["floor_sets"], "rep_fd_ratio": ratio,
           "rep_fd_samples": m, "rep_fd_protocol": protocol, "rep_fd_reference_size": plan["reference_size"],
           "sample_steps": cfg.sample_steps, "eta": cfg.eta, "sample_wall_s": wall}
    if protocol == "subsets":
        what = (f"sampled {m} vs all {len(reps)} real; floor: {m} real vs all {len(reps)}, "
                f"mean +- std of {plan['floor_sets']} random subsets")
    else:
        res.update(rep_fd_heldout_size=floor["heldout_size"], rep_fd_split_by=floor["by"])
        what = (f"sampled {m} vs {plan['reference_size']} real (half B, by {floor['by']}); floor: {m} real of "
                f"half A vs half B, mean +- std of {plan['floor_sets']} splits")
    print(f"representation FD ({protocol}: {what}): sampled {fd:.4f} vs floor {floor['mean']:.4f} +- "
          f"{floor['std']:.4f}; ratio {ratio:.2f}; DDIM {cfg.sample_steps} steps, eta {cfg.eta}")
    for note in plan["notes"]:
        print(f"  note: {note}")
    return res


def load_rdm(source, device=None):
    """(RDM in eval mode with its inference (EMA) weights, run config or None, encoder fingerprint or None)."""
    from ..config import RDMRun
    from ..rdm import RDM
    src = Path(source)
    if src.is_file():
        from ..official import rdm_from_official
        model, _ = rdm_from_official(src, ema=True)
        return model.eval().to(device or "cpu"), None, None
    raw = read_config(src)
    fp = raw.pop("encoder_fingerprint", None)
    cfg = from_dict(RDMRun, raw)
    model = RDM(cfg.model)
    tensors, _ = load_tensors(src / WEIGHTS)
    model.load_state_dict(tensors)
    return model.eval().to(device or "cpu"), cfg, fp


@torch.no_grad()
def sample_reps(rdm_src, out=None, num: int = 1000, steps: Optional[int] = None, eta: Optional[float] = None,
                seed: int = 0, label: Optional[int] = None, labels=None, batch_size: int = 1000, device=None,
                progress: bool = True) -> dict:
    """Sample ``num`` representations from an RDM run directory or official file (sample i uses seed + i,
    whatever the batch size); optionally write them to ``out`` (safetensors with the encoder fingerprint)."""
    dev = torch.device(device) if device is not None else setup_torch()
    model, cfg, fp = load_rdm(rdm_src, dev)
    result = draw_reps(model, cfg, num, steps, eta, seed, label, labels, batch_size, progress)
    if out is not None:
        save_tensors(out, result, {"kind": REPS_KIND, "encoder_fingerprint": fp or "unknown", "rdm": str(rdm_src),
                                   "steps": result["steps"].item(), "eta": result["eta"].item(), "seed": seed})
        print(f"wrote {out}: {num} representations (DDIM {result['steps'].item()} steps, eta {result['eta'].item()})")
    return result


@torch.no_grad()
def draw_reps(model, cfg, num: int, steps: Optional[int] = None, eta: Optional[float] = None, seed: int = 0,
              label: Optional[int] = None, labels=None, batch_size: int = 1000, progress: bool = False) -> dict:
    """DDIM samples of a loaded RDM (``cfg``: its RDMRun, or None for the paper's sampler settings):
    {"reps" (num, D) float32 on the CPU, "labels" when class-conditional, "steps", "eta"}."""
    from tqdm.auto import tqdm
    from ..config import DiffusionConfig
    from ..diffusion import GaussianDiffusion
    from ..rng import randn_per_sample

    dev = next(model.parameters()).device
    dcfg = cfg.diffusion if cfg is not None else DiffusionConfig()
    steps = steps or (cfg.sample_steps if cfg is not None else 250)
    eta = (cfg.eta if cfg is not None else 1.0) if eta is None else eta
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
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(n)]
        x_T = randn_per_sample((n, model.cfg.in_channels), gens, device=dev)
        y = labels[i:i + n].to(dev) if labels is not None else None
        chunks.append(diffusion.ddim_sample(lambda x, t: model(x, t, y), x_T, steps, eta, generators=gens).float().cpu())
        bar.update(n)
    bar.close()
    result = {"reps": torch.cat(chunks), "steps": torch.tensor(steps), "eta": torch.tensor(float(eta))}
    if labels is not None:
        result["labels"] = labels.clone()
    return result


def rep_fd(a, b) -> dict:
    """Fréchet distance between the ``reps`` of two files (cache-reps or sample-reps output)."""
    from ..evaluate import fd_between
    ta, ma = load_reps(a)
    tb, mb = load_reps(b)
    fa, fb = ma.get("encoder_fingerprint"), mb.get("encoder_fingerprint")
    if fa and fb and "unknown" not in (fa, fb) and fa != fb:
        raise CheckpointError(f"{a} and {b} come from different encoders ({fa} vs {fb}); their FD is meaningless")
    return {"rep_fd": fd_between(ta["reps"], tb["reps"]), "n_a": len(ta["reps"]), "n_b": len(tb["reps"])}


# ------------------------------------------------------------------------------------------------
# train-pixel
# ------------------------------------------------------------------------------------------------
def train_pixel(cfg, out: str, device: Optional[str] = None, progress: bool = True) -> dict:
    """Train the pixel generator (MAGE) on cached tokens, conditioned on the representations of the very
    same crops (RCG), on class labels (``model.cond="class"``) or on nothing (``"none"``, the baseline)."""
    from dataclasses import replace
    from ..pixel.mage import MAGE

    if cfg.generator == "dit":
        from ..train_dit import train_dit
        return train_dit(cfg, out, device, progress)
    if not (cfg.cache and cfg.encoder and cfg.tokenizer):
        raise ValueError("train-pixel needs --cache (rcg cache-reps --tokenizer ...), --encoder and --tokenizer")
    dev = setup_torch(device, cfg.optim.num_threads)
    enc_fp = fingerprint(load_encoder(cfg.encoder))
    tok = load_tokenizer(cfg.tokenizer)
    tok_fp = fingerprint(tok)
    tensors, meta = load_reps(cfg.cache, enc_fp, cfg.encoder)
    if "tokens" not in tensors:
        raise CheckpointError(f"{cfg.cache} holds no tokens: rebuild it with rcg cache-reps --tokenizer {cfg.tokenizer}")
    if meta.get("tokenizer_fingerprint") != tok_fp:
        raise CheckpointError(f"the tokens in {cfg.cache} were made by another tokenizer than {cfg.tokenizer}; "
                              f"rebuild it with rcg cache-reps --tokenizer {cfg.tokenizer}")
    tokens, reps, labels = tensors["tokens"].long(), tensors["reps"].float(), tensors.get("labels")
    model_cfg = replace(cfg.model, codebook_size=tok.cfg.n_embed, num_tokens=tokens.shape[1], rep_dim=reps.shape[1])
    if model_cfg.cond == "class":
        if labels is None:
            raise ValueError(f"model.cond=class needs labels, but {cfg.cache} has none")
        model_cfg = replace(model_cfg, num_classes=int(meta.get("num_classes") or int(labels.max()) + 1))
    cfg = replace(cfg, model=model_cfg)
    run_dir, resuming = prepare_run_dir(out, {**to_dict(cfg), "encoder_fingerprint": enc_fp,
                                              "tokenizer_fingerprint": tok_fp})
    torch.manual_seed(cfg.optim.seed)
    model = MAGE(model_cfg).to(dev)
    tokens_d, reps_d = tokens.to(dev), reps.to(dev)
    labels_d = labels.to(dev) if labels is not None else None
    batches = EpochBatches(len(tokens), cfg.optim.batch_size, cfg.optim.seed)
    total = max(1, int(round(cfg.optim.epochs * batches.steps_per_epoch)))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"MAGE ({model_cfg.cond}-conditioned): {n_params:,} parameters; {len(tokens)} token maps of "
          f"{tokens.shape[1]} tokens; {total} steps")

    def loss_fn(step, gen, part):
        idx = batches(step)
        n = len(idx)
        idx = idx[part].to(dev)
        rep = reps_d[idx] if model_cfg.cond == "rep" else None
        y = labels_d[idx] if model_cfg.cond == "class" else None
        return model.loss(tokens_d[idx], rep=rep, labels=y, generator=gen, rows=part, global_batch=n)

    job = Job(model=model, loss_fn=loss_fn, steps_per_epoch=batches.steps_per_epoch, total_steps=total,
              images_per_step=cfg.optim.batch_size, export=lambda: model.state_dict(), desc="train-pixel",
              metadata={"encoder_fingerprint": enc_fp, "tokenizer_fingerprint": tok_fp}, sharded=True)
    t0 = time.time()
    last = fit(run_dir, job, cfg.optim, resuming, progress)
    if not dist.is_main():
        return last
    summary = {"stage": "pixel", "generator": "mage", "cond": model_cfg.cond, "params": n_params, "steps": total,
               "train_wall_s": round(time.time() - t0, 1), **last}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_pixel(source, device=None):
    """(MAGE or DiT in eval mode, PixelRun config, {encoder_fingerprint, tokenizer_fingerprint}) from a run
    dir, or (MAGE, None, info) from an official MAGE file."""
    from ..config import PixelRun
    from ..pixel.mage import MAGE
    src = Path(source)
    if src.is_file():
        from ..official import mage_from_official
        model, info = mage_from_official(src)
        return model.eval().to(device or "cpu"), None, info
    raw = read_config(src)
    fps = {k: raw.pop(k, None) for k in ("encoder_fingerprint", "tokenizer_fingerprint")}
    cfg = from_dict(PixelRun, raw)
    from ..pixel import generator
    model = generator(cfg.generator).network(cfg.model)
    tensors, _ = load_tensors(src / WEIGHTS)
    model.load_state_dict(tensors)
    return model.eval().to(device or "cpu"), cfg, fps


def export_run(src, dst, half: bool = True, note: str = "") -> Path:
    """Copy a run's config and inference weights (optionally as float16, to ship small files) to ``dst``."""
    import shutil
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "config.json", dst / "config.json")
    tensors, meta = load_tensors(src / WEIGHTS)
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    meta.pop("sha256", None)
    save_tensors(dst / WEIGHTS, tensors, {**meta, "exported_from": str(src), "dtype": "float16" if half else "as trained"})
    if (src / "summary.json").exists():
        shutil.copyfile(src / "summary.json", dst / "summary.json")
    if note:
        (dst / "README.md").write_text(note)
    return dst


# ------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------
ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED_ENCODER = ASSETS / "fmnist-encoder"


# The demo fits `make demo` from a fresh clone (venv included) in 10 minutes on 2 CPU cores (BENCHMARKS.md), sized to
# the machine. With native bf16: the presets with a shorter tokenizer run (0.4 epoch: ~1 dB PSNR less than the
# preset's epoch), a shorter RDM (6 epochs of one view, representation FD on 2000 samples) and MAGE for 2.75 of its 3
# epochs. Without it (fp32, e.g. an AVX2-only CPU; measured with the AVX2 kernels: MAGE ~315 img/s): half the
# images in the cache (30k), a 0.2-epoch tokenizer, 5 RDM epochs and 3.25 MAGE epochs of the 30k token maps (2 epochs: 6 min 54 s
# for make demo, but MAGE's samples were blobs even from real representations).
DEMO_BUDGETS = {
    "bf16": {"tokenizer": ["optim.epochs=0.4"], "rdm": ["optim.epochs=6", "fd_samples=2000"],
             "pixel": ["optim.epochs=2.75"]},
    "fp32": {"tokenizer": ["optim.epochs=0.2"], "rdm": ["optim.epochs=5", "fd_samples=1000"],
             "pixel": ["optim.epochs=3.25"], "cache_limit": 30000},
}
DEMO_BUDGET = DEMO_BUDGETS["bf16"]


def demo(out: str = "runs/demo", encoder: Optional[str] = None, train_new_encoder: bool = False,
         device: Optional[str] = None, progress: bool = True, overrides: Optional[dict] = None) -> dict:
    """Every stage on Fashion-MNIST with the CPU presets, into ``out``: tokenizer, representation cache,
    RDM, MAGE, then an 8x8 grid of unconditional samples, variations of reference images and an
    interpolation strip. ``overrides`` maps a stage name (encoder, tokenizer, rdm, pixel) to ``--set``
    style overrides (used by the tests to shrink everything)."""
    from ..presets import ENCODER_PRESETS, PIXEL_PRESETS, RDM_RUN_PRESETS, TOKENIZER_PRESETS
    from ..tree import apply_overrides, override
    from ..data import load_dataset
    from ..sample import RCGSampler, write_images
    from ..precision import describe, native_bf16
    dev = setup_torch(device)
    kind = "bf16" if native_bf16(dev) else "fp32"
    budget = dict(DEMO_BUDGETS[kind])
    cache_limit = budget.pop("cache_limit", 0)
    over = dict(overrides or {})
    for stage_name, stage_budget in budget.items():        # the caller's overrides come last and win
        over[stage_name] = list(stage_budget) + list(over.get(stage_name, []))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, summary, times = time.time(), {"precision": kind, "budget": budget}, {}
    print(f"precision: {describe(None, dev)}\n"
          f"demo budget for this machine ({kind}; 10 minutes on 2 CPU cores), on top of the presets: {budget}"
          + (f"; the cache and MAGE use the first {cache_limit} training images" if cache_limit else ""))

    def stage(name):
        times[name] = round(time.time() - t0 - sum(times.values()), 1)

    enc_cfg = apply_overrides(ENCODER_PRESETS["fmnist-encoder"], over.get("encoder", []))
    if train_new_encoder:
        encoder = str(out / "encoder")
        print(f"[1/6] training the encoder (preset fmnist-encoder) into {encoder}")
        summary["encoder"] = train_encoder(enc_cfg, encoder, device, progress)
    elif encoder is None:
        if not (SHIPPED_ENCODER / WEIGHTS).is_file():
            raise FileNotFoundError(f"no shipped encoder weights in {SHIPPED_ENCODER}; use --train-encoder")
        encoder = str(SHIPPED_ENCODER)
        print(f"[1/6] encoder: the weights shipped with rcg ({encoder}), trained by this project's "
              f"`rcg train-encoder --preset fmnist-encoder` (command and seed in its README.md)")
    else:
        print(f"[1/6] encoder: {encoder}")
    stage("encoder")
    print(f"[2/6] training the VQ tokenizer (preset fmnist-tokenizer) into {out / 'tokenizer'}")
    tok_cfg = apply_overrides(TOKENIZER_PRESETS["fmnist-tokenizer"], over.get("tokenizer", []))
    summary["tokenizer"] = train_tokenizer(tok_cfg, str(out / "tokenizer"), device, progress)
    stage("tokenizer")
    cache = out / "cache.safetensors"
    print(f"[3/6] representations and tokens of every training image (crop + flip) -> {cache}")
    data_over = [f"data.{k}={v}" for k, v in over.get("data", {}).items()]
    if cache_limit and "limit" not in over.get("data", {}):
        data_over.append(f"data.limit={cache_limit}")
    summary["cache"] = cache_reps(encoder, cache, views=1, device=device, tokenizer=str(out / "tokenizer"),
                                  data_overrides=data_over, bf16=None, progress=progress)
    stage("cache")
    print(f"[4/6] training the RDM (preset fmnist-rdm) into {out / 'rdm'}")
    rdm_cfg = apply_overrides(override(override(RDM_RUN_PRESETS["fmnist-rdm"], "cache", str(cache)), "encoder", encoder),
                              over.get("rdm", []))
    summary["rdm"] = train_rdm(rdm_cfg, str(out / "rdm"), device, progress)
    stage("rdm")
    print(f"[5/6] training MAGE on representations (preset fmnist-mage) into {out / 'pixel'}")
    pix_cfg = apply_overrides(PIXEL_PRESETS["fmnist-mage"], [f"cache={cache}", f"encoder={encoder}",
                                                             f"tokenizer={out / 'tokenizer'}"] + over.get("pixel", []))
    summary["pixel"] = train_pixel(pix_cfg, str(out / "pixel"), device, progress)
    stage("pixel")
    print("[6/6] sampling")
    s = RCGSampler(str(out / "pixel"), str(out / "rdm"), device)
    grid = torch.cat(list(s.stream(64, seed=0, batch_size=64)))
    files = {"samples": write_images(grid, out / "samples.png", nrow=8, scale=3)}
    test = load_dataset(replace_data(enc_cfg.eval_data, over.get("data", {})))
    idx = _one_per_class(test.labels, 6) if test.labels is not None else list(range(6))
    refs = test.images[idx]
    rows = []
    for i in range(len(refs)):
        rows.append(torch.cat([refs[i:i + 1], s.images_from_reps(s.reps_from_images(refs[i:i + 1]).expand(7, -1),
                                                                 list(range(100, 107)))]))
    files["references"] = write_images(torch.cat(rows), out / "references.png", nrow=8, scale=3)
    strip = s.interpolate(refs[0], refs[1], num=11, seed=7)
    files["interpolation"] = write_images(torch.cat([refs[0:1], strip, refs[1:2]]), out / "interpolation.png",
                                          nrow=13, scale=3)
    stage("sample")
    summary.update(files=files, stage_wall_s=times, wall_s=round(time.time() - t0, 1),
                   encoder_source=encoder)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    r, t = summary["rdm"], summary["tokenizer"]
    print(f"\ndemo done in {summary['wall_s']:.0f} s -> {out}\n"
          f"  stage times (s): {times}\n"
          f"  tokenizer PSNR {t.get('psnr', float('nan')):.2f} dB; RDM representation FD {r['rep_fd']:.4f} "
          f"(real-subset floor {r['rep_fd_floor']:.4f})\n"
          f"  {files['samples']}\n  {files['references']} (first column: the reference)\n"
          f"  {files['interpolation']} (ends: the two images)")
    return summary


def replace_data(cfg, fields: dict):
    from dataclasses import replace
    return replace(cfg, **fields) if fields else cfg


def _one_per_class(labels: torch.Tensor, n: int) -> list:
    """Indices of the first image of each of the first ``n`` classes."""
    out = []
    for c in range(int(labels.max()) + 1):
        hits = (labels == c).nonzero()
        if len(hits):
            out.append(int(hits[0]))
        if len(out) == n:
            break
    return out


# ------------------------------------------------------------------------------------------------
# train-tokenizer
# ------------------------------------------------------------------------------------------------
from ..tokenizer import TOKENIZER_KIND  # noqa: E402


def train_tokenizer(cfg, out: str, device: Optional[str] = None, progress: bool = True) -> dict:
    """Train the VQ tokenizer (MAGE's VQGAN architecture) on ``cfg.data`` into the run directory ``out``;
    ends with the held-out reconstruction PSNR, codebook usage and perplexity (``summary.json``) and a grid
    of held-out images over their reconstructions (``samples/reconstructions.png``)."""
    from ..tokenizer import VQModel, VQTrainer, reconstruction_metrics

    cfg = fit_to_data(cfg)
    dev = setup_torch(device, cfg.optim.num_threads)
    m = cfg.model
    data = load_dataset(cfg.data)                 # every check on the input before the run directory is touched
    print(f"data: {data.source}: {len(data)} images {tuple(data.images.shape[1:])}")
    if (data.images.shape[1], data.images.shape[-1]) != (m.in_channels, m.resolution) or m.out_channels != m.in_channels:
        raise ValueError(f"the tokenizer takes {m.in_channels}x{m.resolution}px images (out_channels {m.out_channels}) "
                         f"but the data are {data.images.shape[1]}x{data.images.shape[-1]}px; set data.channels / "
                         f"data.resolution or model.in_channels / out_channels / resolution")
    try:
        held = load_dataset(cfg.eval_data)
        split = "held-out"
        if held.images.shape[1:] != data.images.shape[1:]:
            raise ValueError(f"eval_data gives {tuple(held.images.shape[1:])} images, training {tuple(data.images.shape[1:])}")
    except Exception as e:  # no test split: report the PSNR on (the last) training images, and say so
        print(f"no held-out images ({e}); PSNR is measured on training images")
        held, split = data, "train"
    run_dir, resuming = prepare_run_dir(out, to_dict(cfg))
    torch.manual_seed(cfg.optim.seed)
    vq = VQModel(m)
    trainer = VQTrainer(vq, cfg.l1_weight, cfg.mse_weight, cfg.grad_weight, cfg.reseed.decay,
                        cfg.reseed.threshold).to(dev)
    images = data.images.to(dev)
    batches = EpochBatches(len(images), cfg.optim.batch_size, cfg.optim.seed)
    total = max(1, int(round(cfg.optim.epochs * batches.steps_per_epoch)))
    stop = int(cfg.reseed.stop * total)
    n_params = sum(p.numel() for p in vq.parameters())
    print(f"VQ tokenizer: {n_params:,} parameters; {vq.token_grid}x{vq.token_grid} tokens of {m.n_embed} codes; "
          f"{total} steps")

    def loss_fn(step, gen, part):
        x = images[batches(step).to(dev)].float().div(255.0)
        if cfg.reseed.every and 0 < step < stop and step % cfg.reseed.every == 0:
            # under no_grad, before the loss; randomness from the step generator; on the whole global batch
            # in every process, so the codebook stays the same everywhere
            trainer.reseed(x, gen)
        return trainer.loss(x[part])

    n_eval = min(cfg.eval_images or len(held), len(held))
    eval_images = held.images[-n_eval:]

    def evaluate(step):
        res = reconstruction_metrics(vq, eval_images, bf16=resolve_bf16(cfg.optim.bf16, dev))
        print(f"step {step}: {split} PSNR {res['psnr']:.2f} dB, codebook usage {res['codebook_usage']:.3f}, "
              f"perplexity {res['perplexity']:.1f} ({res['eval_images']} images)")
        return {("eval_" + k if k != "eval_images" else k): v for k, v in res.items()}

    every = int(cfg.eval_every_epochs * batches.steps_per_epoch)
    job = Job(model=trainer, loss_fn=loss_fn, steps_per_epoch=batches.steps_per_epoch, total_steps=total,
              images_per_step=cfg.optim.batch_size, export=lambda: vq.state_dict(), evaluate=evaluate,
              eval_every=every, metadata={"kind": TOKENIZER_KIND}, desc="train-tokenizer", sharded=True)
    t0 = time.time()
    last = fit(run_dir, job, cfg.optim, resuming, progress)
    if not dist.is_main():
        return last
    summary_path = run_dir / "summary.json"
    if not last and summary_path.is_file():
        print(f"{run_dir} is finished; summary: {summary_path}")
        return json.loads(summary_path.read_text())
    summary = {"stage": "tokenizer", "params": n_params, "steps": total, "train_wall_s": round(time.time() - t0, 1),
               "token_grid": vq.token_grid, **last}
    t1 = time.time()
    tok = load_tokenizer(run_dir, dev)
    res = reconstruction_metrics(tok, held.images)
    summary.update(res, psnr_split=split, eval_wall_s=round(time.time() - t1, 1), fingerprint=fingerprint(tok))
    append_metrics(run_dir / METRICS, {"step": total, "final": True, **res})
    with torch.no_grad():
        x = held.images[:16].to(dev)
        recon = tok.decode_ids(tok.encode(x)[1], (vq.token_grid, vq.token_grid)).float().clamp(0, 1)
    from ..sample import to_uint8, write_images
    write_images(torch.cat([x.cpu(), to_uint8(recon).cpu()]), run_dir / "samples" / "reconstructions.png", nrow=16,
                 scale=max(1, 112 // m.resolution))
    print(f"{split} reconstruction ({res['eval_images']} images): PSNR {res['psnr']:.2f} dB, codebook usage "
          f"{res['codebook_usage']:.3f}, perplexity {res['perplexity']:.1f} -> {run_dir}")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_tokenizer(source, device=None):
    """A frozen VQ tokenizer (VQModel, eval mode) from a ``train-tokenizer`` run directory, or from an official
    VQGAN checkpoint file (MAGE's ``vqgan_jax_strongaug.ckpt`` layout; 256 px assumed)."""
    from ..config import TokenizerRun
    from ..tokenizer import VQModel
    src = Path(source)
    if src.is_file():
        from ..official import vqgan_from_official
        vq, _ = vqgan_from_official(src)
    else:
        cfg = from_dict(TokenizerRun, read_config(src))
        vq = VQModel(cfg.model)
        tensors, meta = load_tensors(src / WEIGHTS)
        if meta.get("kind", TOKENIZER_KIND) != TOKENIZER_KIND:
            raise CheckpointError(f"{src} holds a {meta.get('kind')!r} checkpoint, not a tokenizer")
        vq.load_state_dict(tensors)
    vq.requires_grad_(False)
    return vq.eval().to(device or "cpu")


# ------------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------------
def run_eval(*, npz=None, folder=None, pixel=None, rdm=None, preset=None, weights=None, mage=None,
             num: int = 10000, seed: int = 0, guidance=None,
             temperature=None, steps=None, inception_weights=None, evalnet=None, ref=None, ref_data=None,
             ref_cache=None, rep_reference=None, batch_size: int = 250, out_json=None, device=None,
             progress: bool = True) -> dict:
    """``rcg eval``: metrics of generated images (an npz, a folder, or ``num`` samples streamed from a
    pixel run + RDM, no PNG round trip) against a reference (an npz of statistics, or ``ref_data``, a
    DataConfig whose statistics are computed once and cached in ``ref_cache``). Under torchrun the ``num``
    samples are split across the processes and gathered on rank 0, which alone computes the metrics and
    returns them (the other ranks return ``{}``)."""
    from .. import evaluate as E
    if sum(x is not None for x in (npz, folder, pixel or preset)) != 1:
        raise ValueError("give exactly one of --npz, --folder, --pixel (or --preset for the official weights)")
    if (inception_weights is None) == (evalnet is None):
        raise ValueError("give exactly one feature network: --inception-weights FILE or --evalnet RUN_DIR")
    if ref is None and ref_data is None:
        raise ValueError("give a reference: --ref FILE.npz, or --ref-data (with --ref-cache to keep its statistics)")
    dev = setup_torch(device)
    if not dist.is_main():
        if npz is None and folder is None:      # help generate; rank 0 gathers and scores
            from .sample import load_sampler
            s = load_sampler(pixel, rdm, dev, preset, weights, mage)
            for _ in s.stream(num, seed=seed, batch_size=batch_size, steps=steps, temperature=temperature,
                              guidance=guidance):
                pass
        return {}
    if inception_weights is not None:
        from ..inception import InceptionV3
        net = InceptionV3(inception_weights, device=dev)
    else:
        from ..evalnet import load_evalnet
        net = load_evalnet(evalnet, dev)
    if ref is not None:
        reference = E.load_reference(ref, net)
    else:
        reference = E.reference_stats(lambda: E.iterate_tensor(load_dataset(ref_data).images, batch_size), net,
                                      cache=ref_cache, source_name=f"{ref_data}", progress=progress)
    rep_encoder = rep_ref = None
    if npz is not None:
        batches = E.iterate_npz(npz, batch_size)
    elif folder is not None:
        batches = E.iterate_image_folder(folder, batch_size)
    else:
        from ..sample import load_sampler
        s = load_sampler(pixel, rdm, dev, preset, weights, mage)
        batches = s.stream(num, seed=seed, batch_size=batch_size, steps=steps, temperature=temperature,
                           guidance=guidance)
        if rep_reference is not None:
            rep_encoder = s.encoder
            rep_ref = load_reps(rep_reference, fingerprint(s.encoder), str(s.cfg.encoder))[0]["reps"]
    res = E.evaluate_stream(batches, net, reference, rep_encoder=rep_encoder, rep_reference=rep_ref,
                            progress=progress)
    res["source"] = npz or folder or f"{pixel or preset} (rdm {rdm or weights}, seed {seed}, guidance " \
                                     f"{guidance}, temperature {temperature}, steps {steps})"
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return res
