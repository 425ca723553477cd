"""Reference statistics of real images (cached in an npz, or ADM's reference batches) and the evaluation of a
stream of generated images against them: FID, IS, precision/recall and representation FD in one pass."""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..prepared import PreparedImages
from ..store import atomic_write, fingerprint
from .features import DEFAULT_MAX_KEEP, FeatureNet, StreamingStats, check_images
from .metrics import EvalError, fid_from_stats, inception_score, precision_recall
from .sources import iterate_npz, iterate_tensor

REFERENCE_KIND = "rcg-reference"


@dataclass
class Reference:
    """Statistics of the real data under one feature network.

    ``feats`` (M, D) are kept for precision/recall (None: PR is skipped). ``feature_net`` is None for an
    external file (ADM's reference batch), whose network cannot be checked. ``num`` is the number of
    images behind ``mu``/``sigma`` (None when the file does not say)."""
    mu: np.ndarray
    sigma: np.ndarray
    num: Optional[int] = None
    feats: Optional[torch.Tensor] = None
    feature_net: Optional[str] = None
    feature_net_sha256: Optional[str] = None
    source: str = ""

    @property
    def dim(self) -> int:
        return int(np.asarray(self.mu).shape[0])

    def save(self, path) -> Path:
        """Write an npz (atomically) that :func:`load_reference` reads back and checks."""
        feats = self.feats if self.feats is not None else torch.zeros(0, self.dim)
        buf = io.BytesIO()
        np.savez(buf, kind=np.array(REFERENCE_KIND), version=np.array(1),
                 mu=np.asarray(self.mu, np.float64), sigma=np.asarray(self.sigma, np.float64),
                 features=feats.float().cpu().numpy(), num=np.array(-1 if self.num is None else self.num),
                 feature_net=np.array(self.feature_net or ""),
                 feature_net_sha256=np.array(self.feature_net_sha256 or ""), source=np.array(self.source or ""))
        atomic_write(path, buf.getvalue())
        return Path(path)


def reference_from_stats(stats: StreamingStats, net: Optional[FeatureNet] = None, source: str = "") -> Reference:
    mu, sigma = stats.stats()
    kept = stats.kept_features()
    return Reference(mu=mu, sigma=sigma, num=stats.n, feats=kept if len(kept) else None,
                     feature_net=net.name if net is not None else None,
                     feature_net_sha256=net.weights_sha256 if net is not None else None, source=source)


def reference_from_features(feats: torch.Tensor, net: Optional[FeatureNet] = None, source: str = "",
                            max_keep: int = DEFAULT_MAX_KEEP) -> Reference:
    """A reference from features already in memory, e.g. cached representations (rep FD)."""
    st = StreamingStats(max_keep=max_keep, keep_logits=False)
    st.update(feats)
    return reference_from_stats(st, net, source)


def _check_reference_net(ref: Reference, net: Optional[FeatureNet], where: str) -> None:
    if net is None or ref.feature_net is None:
        return
    if ref.feature_net != net.name or (ref.feature_net_sha256 or "") != (net.weights_sha256 or ""):
        raise EvalError(
            f"{where} was computed with feature network {ref.feature_net!r} (weights sha256 "
            f"{(ref.feature_net_sha256 or '?')[:16]}), not with {net.name!r} (sha256 {(net.weights_sha256 or '?')[:16]}); "
            f"its statistics are not comparable. Delete it (or use another cache path) to recompute it with this network.")


def load_reference(path, net: Optional[FeatureNet] = None, source: Optional[str] = None, adm_images: bool = True,
                   batch_size: int = 200, max_keep: int = DEFAULT_MAX_KEEP, progress: bool = True) -> Reference:
    """Read reference statistics from an npz.

    Our own cache (written by :func:`reference_stats`) is refused when it was made with another feature
    network than ``net`` or (when ``source`` is given) from other data. An ADM-suite reference batch
    (``mu``, ``sigma``, optionally the reference images ``arr_0``) is accepted as is: its ``mu``/``sigma``
    give FID (as RCG's numbers do), and when ``adm_images`` and ``net`` are given its images are passed
    through ``net`` for precision/recall."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} do not exist")
    try:
        z = np.load(path, allow_pickle=False)
        files = set(z.files)
    except Exception as e:
        raise EvalError(f"{path} is not a readable npz file ({type(e).__name__}: {e})") from e
    if "kind" in files and str(z["kind"]) == REFERENCE_KIND:
        feats = torch.from_numpy(np.asarray(z["features"], np.float32))
        num = int(z["num"])
        ref = Reference(mu=np.asarray(z["mu"], np.float64), sigma=np.asarray(z["sigma"], np.float64),
                        num=None if num < 0 else num, feats=feats if len(feats) else None,
                        feature_net=str(z["feature_net"]) or None,
                        feature_net_sha256=str(z["feature_net_sha256"]) or None, source=str(z["source"]))
        _check_reference_net(ref, net, f"reference cache {path}")
        if source and ref.source and source != ref.source:
            raise EvalError(f"reference cache {path} holds statistics of {ref.source!r}, not of {source!r}. "
                            f"Delete it (or use another cache path) to recompute it.")
        return ref
    if "mu" in files and "sigma" in files:
        mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise EvalError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not a mean and its covariance")
        ref = Reference(mu=mu, sigma=sigma, num=None, feats=None, feature_net=None, source=f"npz:{path}")
        if adm_images and net is not None and "arr_0" in files:
            src = iterate_npz(path, batch_size=batch_size, key="arr_0")
            st = _accumulate(src, net, StreamingStats(max_keep=max_keep, keep_logits=False), progress,
                             "reference images")
            ref.feats = st.kept_features()
        return ref
    raise EvalError(f"{path} holds neither rcg reference statistics nor 'mu'/'sigma' (it has: "
                    f"{', '.join(sorted(files)) or 'nothing'}). An npz of images (arr_0) is a sample set: "
                    f"build reference statistics from it with reference_stats(iterate_npz(path), ...)")


def reference_stats(source, net: FeatureNet, cache=None, source_name: str = "", max_keep: int = DEFAULT_MAX_KEEP,
                    batch_size: int = 500, progress: bool = True) -> Reference:
    """Reference statistics of real images under ``net``, computed once and cached in ``cache`` (npz).

    ``source``: an iterable of uint8 batches (e.g. :func:`iterate_image_folder`), a callable returning
    one (called only on a cache miss), a uint8 tensor (N, C, H, W) or an object with ``.images`` (an
    ``rcg.data.ImageSet``). An existing cache is read instead, and refused when it was made with another
    feature network or (``source_name`` given) from other data."""
    if cache is not None and Path(cache).is_file():
        ref = load_reference(cache, net, source=source_name or None, progress=progress)
        print(f"reference statistics: {cache} ({ref.num} images of {ref.source or 'unnamed data'}, {ref.feature_net})")
        return ref
    if callable(source) and not isinstance(source, torch.Tensor):
        source = source()
    if hasattr(source, "images") and isinstance(source.images, (torch.Tensor, PreparedImages)):
        source = source.images
    if isinstance(source, (torch.Tensor, PreparedImages)):
        source = iterate_tensor(source, batch_size)
    st = _accumulate(source, net, StreamingStats(max_keep=max_keep, keep_logits=False), progress, "reference")
    ref = reference_from_stats(st, net, source_name)
    if cache is not None:
        ref.save(cache)
        print(f"wrote reference statistics {cache} ({ref.num} images, {net.name})")
    return ref


def _accumulate(batches: Iterable[torch.Tensor], net: FeatureNet, stats: StreamingStats, progress: bool, desc: str,
                rep_encoder=None, rep_stats: Optional[StreamingStats] = None) -> StreamingStats:
    bar = tqdm(total=getattr(batches, "num_images", None), unit="img", unit_scale=True, desc=desc, disable=not progress,
               dynamic_ncols=True)
    rep_dev = next(rep_encoder.parameters()).device if rep_encoder is not None else None
    with torch.no_grad():
        for i, images in enumerate(batches):
            check_images(images, f"batch {i} of {desc}")
            feats, logits = net.features_and_logits(images)
            stats.update(feats, logits)
            if rep_encoder is not None:
                rep_stats.update(rep_encoder.encode(images.to(rep_dev)).float())
            bar.update(images.shape[0])
    bar.close()
    if stats.n == 0:
        raise EvalError(f"{desc}: the image stream was empty")
    return stats


def _as_reference(ref, what: str) -> Optional[Reference]:
    if ref is None or isinstance(ref, Reference):
        return ref
    if isinstance(ref, torch.Tensor):
        return reference_from_features(ref, None, what)
    if isinstance(ref, (tuple, list)) and len(ref) == 2:
        return Reference(mu=np.asarray(ref[0], np.float64), sigma=np.asarray(ref[1], np.float64))
    raise EvalError(f"{what}: expected a Reference, an (N, D) tensor of features or a (mu, sigma) pair, "
                    f"got {type(ref).__name__}")


def evaluate_stream(batches: Iterable[torch.Tensor], net: FeatureNet, reference=None, rep_encoder=None,
                    rep_reference=None, *, max_keep: int = DEFAULT_MAX_KEEP, is_splits: int = 10, pr_k: int = 3,
                    progress: bool = True, desc: str = "eval") -> dict:
    """FID, IS and precision/recall (and representation FD) of a stream of uint8 (B, C, H, W) batches.

    ``net``: a :class:`FeatureNet`. ``reference``: a :class:`Reference` (see :func:`reference_stats`,
    :func:`load_reference`), or None for IS only. ``rep_encoder`` (an ``rcg.encoders.Encoder``) with
    ``rep_reference`` (a Reference of representations, an (N, D) tensor of real representations, or a
    (mu, sigma) pair) adds ``rep_fd``: the Fréchet distance of the generated images' standardized
    representations. Returns a JSON-able dict naming the feature network, its weights' sha256 and both
    sample counts; metric names carry the network's suffix (``fid`` / ``fid_dom``, ``is`` / ``is_dom``).
    """
    if not isinstance(net, FeatureNet):
        raise EvalError(f"net must be a FeatureNet (InceptionV3, EvalNet), "
                        f"got {type(net).__name__}")
    if (rep_encoder is None) != (rep_reference is None):
        raise EvalError("representation FD needs both rep_encoder and rep_reference")
    ref = _as_reference(reference, "reference")
    if ref is not None:
        _check_reference_net(ref, net, "the reference statistics")
    rep_ref = _as_reference(rep_reference, "rep_reference")
    rep_fp = fingerprint(rep_encoder) if rep_encoder is not None else None
    if rep_fp is not None and rep_ref.feature_net_sha256 and rep_ref.feature_net_sha256 != rep_fp:
        raise EvalError(f"the representation reference was made by encoder {rep_ref.feature_net_sha256}, "
                        f"not by the given encoder ({rep_fp})")
    t0 = time.time()
    stats = StreamingStats(max_keep=max_keep)
    rep_stats = StreamingStats(max_keep=0, keep_logits=False) if rep_encoder is not None else None
    _accumulate(batches, net, stats, progress, desc, rep_encoder, rep_stats)
    sfx = net.metric_suffix
    out = {"feature_net": net.name, "feature_net_sha256": net.weights_sha256, "feature_dim": stats.dim,
           "num_samples": stats.n, "num_reference": ref.num if ref is not None else None}
    if ref is not None:
        if ref.dim != stats.dim:
            raise EvalError(f"the reference statistics have {ref.dim} dimensions but {net.name} gives {stats.dim}; "
                            f"they come from another feature network")
        out["reference_source"] = ref.source
        out["fid" + sfx] = fid_from_stats(*stats.stats(), ref.mu, ref.sigma) if stats.n >= 2 else None
    logits = stats.logits()
    if logits is not None:
        splits = min(is_splits, stats.n)
        out["is" + sfx], out["is" + sfx + "_std"] = inception_score(logits, splits=splits, from_logits=True)
        out["is_splits"] = splits
    if ref is not None and ref.feats is not None:
        fake = stats.kept_features()
        if len(fake) > pr_k and len(ref.feats) > pr_k:
            dev = net.device if torch.device(net.device).type == "cuda" else None
            out["precision"], out["recall"] = precision_recall(ref.feats, fake, k=pr_k, device=dev)
            out.update(pr_k=pr_k, pr_num_samples=len(fake), pr_num_reference=len(ref.feats))
    if rep_encoder is not None:
        if rep_ref.dim != rep_stats.dim:
            raise EvalError(f"the representation reference has {rep_ref.dim} dimensions, the encoder gives "
                            f"{rep_stats.dim}")
        out["rep_fd"] = fid_from_stats(*rep_stats.stats(), rep_ref.mu, rep_ref.sigma)
        out.update(rep_encoder_fingerprint=rep_fp, rep_num_reference=rep_ref.num)
    wall = time.time() - t0
    out.update(wall_s=round(wall, 1), img_per_s=round(stats.n / max(wall, 1e-9), 1))
    return out
