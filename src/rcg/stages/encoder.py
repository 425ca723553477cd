"""``rcg train-encoder``: MoCo v3 self-supervised pretraining on the user's images, with a kNN monitor on
labelled held-out images when there are any (labels never enter training)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import augment, dist
from ..config import EncoderRun, fit_to_data
from ..data import ImageSet, load_dataset
from ..encoders import Encoder
from ..evaluate import knn_accuracy
from ..loaders import load
from ..precision import resolve_bf16
from ..rng import EpochBatches
from ..sample import encode_images
from ..ssl import MoCoV3, momentum_at
from ..store import METRICS, append_metrics, fingerprint
from ..feed import rows_of, workers_for
from ..train import Job, Runtime, steps_for
from .common import Built, n_params, train_stage


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


def train_encoder(cfg: EncoderRun, out: str, device: Optional[str] = None, progress: bool = True,
                  runtime: Optional[Runtime] = None) -> dict:
    """MoCo v3 pretraining on ``cfg.data``; writes the encoder run directory ``out``."""
    cfg = fit_to_data(cfg)
    dev = dist.setup(device, cfg.optim.num_threads)
    data = load_dataset(cfg.data)                 # every check on the input before the run directory is touched
    print(f"data: {data.source}: {len(data)} images {tuple(data.images.shape[1:])}")
    if data.images.shape[1] != cfg.encoder.in_chans:
        raise ValueError(f"encoder.in_chans={cfg.encoder.in_chans} but the data has {data.images.shape[1]} channels; "
                         f"set data.channels or encoder.in_chans")
    evalset = _eval_set(cfg) if data.labels is not None or cfg.eval_data.dataset != "folder" else None
    if evalset is None and data.labels is not None:
        print("kNN monitor off: no labelled held-out images")
    bf16 = resolve_bf16(cfg.optim.bf16, dev)

    def build(run_dir):
        encoder = Encoder(cfg.encoder)
        model = MoCoV3(encoder, pred_dim=cfg.pred_dim, temperature=cfg.temperature).to(dev)
        channels_last = cfg.encoder.arch == "resnet"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        batches = EpochBatches(len(data), cfg.optim.batch_size, cfg.optim.seed)
        total = steps_for(cfg.optim.epochs, batches)
        crop = cfg.crop_size or cfg.data.resolution

        def loss(batch, gen):
            # views of the whole global batch (their randomness is per image), then this process's rows
            x = batch.data.to(dev).float() / 255.0
            v1 = batch.take(augment.ssl_view(x, crop, cfg.view1, gen))
            v2 = batch.take(augment.ssl_view(x, crop, cfg.view2, gen))
            if channels_last:
                v1, v2 = (v.contiguous(memory_format=torch.channels_last) for v in (v1, v2))
            m = momentum_at(batch.step / total, cfg.momentum)
            return model(v1, v2, m), {"momentum": m}

        def evaluate(step):
            res = knn_eval(encoder, data, evalset, cfg, full=False, bf16=bf16)
            print(f"step {step}: kNN top-1 rep {res['knn_rep']:.4f}, backbone {res['knn_backbone']:.4f} "
                  f"({res['knn_queries']} held-out vs {res['knn_bank']} train)")
            return res

        def finish(run_dir):
            enc = load("encoder", run_dir, dev).module
            res = {"fingerprint": fingerprint(enc)}
            if evalset is not None:
                res.update(knn_eval(enc, data, evalset, cfg, full=True, bf16=False))
                append_metrics(run_dir / METRICS, {"step": total, "final": True,
                                                   **{k: v for k, v in res.items() if k.startswith("knn")}})
                print(f"final kNN top-1 (k={cfg.knn.k}, {res['knn_queries']} held-out images): "
                      f"representation {res['knn_rep']:.4f}, backbone {res['knn_backbone']:.4f}")
            return res

        every = int(cfg.knn.every_epochs * batches.steps_per_epoch) if evalset is not None else 0
        job = Job(model=model, loss=loss, batches=batches, total_steps=total, export="base_encoder.",
                  evaluate=evaluate if evalset is not None else None, eval_every=every, desc="train-encoder",
                  feed=rows_of(data.images), feed_workers=workers_for(data.images),
                  whole_batch="MoCo v3's contrastive loss (negatives) and the momentum update")
        return Built(job, n_params(encoder), finish)

    return train_stage("encoder", cfg, out, build, progress, runtime)
