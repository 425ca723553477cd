"""Metrics: kNN accuracy of representations, Fréchet distances, and the generation metrics
(FID, Inception Score, precision/recall, representation FD) computed from a stream of images.

Images reach the metrics as uint8 ``(B, C, H, W)`` batches (from a generator, an image folder or an
npz) and pass through a :class:`FeatureNet`: Inception-v3 as torch-fidelity computes it
(:mod:`rcg.inception`, the network RCG's numbers use) or a small domain classifier for 28-32 px data
(:mod:`rcg.evalnet`, whose metrics are reported as ``fid_dom`` / ``is_dom``). :class:`StreamingStats`
keeps running float64 sums for the mean and covariance, the first ``max_keep`` features for
precision/recall and all logits for the Inception Score, so nothing is written to disk on the way.

Semantics follow torch-fidelity: FID from the 2048-d pool features, IS from the unbiased logits
(10 splits after a fixed shuffle with seed 2020, mean over splits of exp(E KL(p(y|x) || p(y)))),
precision/recall of Kynkäänniemi et al. 2019 with k = 3 (a point is covered when it lies within the
distance of some other set's point to that point's k-th nearest neighbour).
"""
from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

REFERENCE_KIND = "rcg-reference"
DEFAULT_MAX_KEEP = 50_000          # features kept for precision/recall (torch-fidelity uses all 50K)


class EvalError(ValueError):
    """Bad evaluation input: mismatched feature networks, too few samples, unreadable sample files."""


# ------------------------------------------------------------------------------------------------
# Representation metrics (kept from the encoder / RDM stages)
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Top-1 accuracy of the cosine-similarity kNN classifier (k neighbours, votes weighted by
    exp(sim / temperature)), the protocol of Wu et al. 2018 used by InstDisc/MoCo/DINO."""
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = 0
    for i in range(0, test.shape[0], chunk):
        sim = test[i:i + chunk] @ train.t()
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        correct += (votes.argmax(1) == test_labels[i:i + chunk]).sum().item()
    return correct / test.shape[0]


def feature_stats(feats: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, float64) of (N, D) features."""
    x = feats.detach().double().cpu().numpy()
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), computed from the eigenvalues of
    sqrt(S1) S2 sqrt(S1), which are real and non-negative (stable for singular covariances)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fd_between(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between two sets of feature vectors."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def subset_fd_floor(feats: torch.Tensor, size: int, subsets: int = 10, seed: int = 0) -> dict:
    """The floor a model's ``size`` samples are compared with (paper Table 8's lower bound): the FD of a
    random real subset of that size to the whole of ``feats``, as the mean and standard deviation over
    ``subsets`` subsets. One subset is a noisy floor: on 10k of the 240k Fashion-MNIST representations,
    200 subsets gave 0.105 +- 0.020 (0.064 to 0.201)."""
    if not 0 < size <= len(feats):
        raise EvalError(f"subset size {size} must be in [1, {len(feats)}] (the number of features)")
    if subsets < 1:
        raise EvalError(f"subsets must be >= 1, got {subsets}")
    mu, sigma = feature_stats(feats)
    g = torch.Generator().manual_seed(seed)
    fds = np.array([frechet_distance(*feature_stats(feats[torch.randperm(len(feats), generator=g)[:size]]), mu, sigma)
                    for _ in range(subsets)])
    return {"mean": float(fds.mean()), "std": float(fds.std(ddof=1)) if subsets > 1 else 0.0,
            "subsets": subsets, "size": size, "all": fds.tolist()}


# The representation-FD check's two protocols. "subsets" (paper Table 8's floor, subset_fd_floor): m sampled vs
# all N real, against m-subsets of the real set vs all of it. The subset is part of what it is compared with, so
# its floor shrinks by about (1 - m/N) while an independent sample's FD grows by (1 + m/N): a perfect sampler
# sits at (N + m) / (N - m) of the floor: 1.67 at N = 4m (above the 1.5x target a model is judged by), 1.22 at
# 10m, 1.105 at 20m, 1.09 for 10k of 240k, and -1e9 at N = m (floor 0). It is kept from N >= SUBSETS_MIN_RATIO m
# (the Fashion-MNIST checks, 10k of 240k and the demo's 2000 of 60k, keep their numbers); below that "halves":
# the real set is split by source image into a held-out half A and a reference half B, the model's m samples
# and an m-subset of A are both compared with B, so a perfect sampler's ratio is ~1 at any N (the switch moves a
# perfect sampler's expected ratio from <= 1.105 to 1, well inside one floor's ~20 % spread).
SUBSETS_MIN_RATIO = 20
MIN_SPLIT_ROWS = 4          # two halves of >= 2 rows each: the fewest that give both a covariance


def image_halves(n: int, image_index: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(held-out A, reference B): sorted row indices of a random split of ``n`` rows by source image (all rows
    with the same ``image_index`` value on one side; each row its own image when None). A takes whole images in
    random order while it holds at most n / 2 rows (at least one image), so |A| <= n / 2 <= |B|."""
    if image_index is None:
        image_index = torch.arange(n)
    image_index = torch.as_tensor(image_index).reshape(-1)
    if len(image_index) != n:
        raise EvalError(f"image_index has {len(image_index)} entries for {n} representations")
    images, inverse, counts = torch.unique(image_index, return_inverse=True, return_counts=True)
    if len(images) < 2:
        raise EvalError(f"the {n} representations come from {len(images)} image; splitting them into disjoint "
                        f"halves needs at least 2 images")
    order = torch.randperm(len(images), generator=generator)
    take = max(1, int((counts[order].cumsum(0) <= n / 2).sum()))
    in_a = torch.zeros(len(images), dtype=torch.bool)
    in_a[order[:take]] = True
    rows_a = in_a[inverse]
    return rows_a.nonzero().reshape(-1), (~rows_a).nonzero().reshape(-1)


def split_fd_floor(feats: torch.Tensor, size: int, image_index: Optional[torch.Tensor] = None, splits: int = 20,
                   seed: int = 0) -> dict:
    """The rep-FD floor for a set too small for :func:`subset_fd_floor`: over ``splits`` random splits of
    ``feats`` by source image (:func:`image_halves`) into a held-out half A and a reference half B, the FD of a
    random m-subset of A vs all of B, with m = min(``size``, the smallest |A|). A and B share no image, so this
    is the FD of two independent real samples of sizes m and |B| (~ tr(S) (1/m + 1/|B|) plus the covariance
    term): what a perfect model's m samples score against B. Returns mean, std (over splits), splits, size (m),
    reference_size and heldout_size (split 0), by ("image" or "row"), all, and split 0's ``reference`` and
    ``heldout`` row indices (the model's samples are to be compared with ``feats[reference]``), plus ``notes``
    on anything that makes the floor less informative."""
    n = len(feats)
    if n < MIN_SPLIT_ROWS:
        raise EvalError(f"{n} representations are too few for a representation-FD floor: two disjoint halves "
                        f"need at least {MIN_SPLIT_ROWS} (2 each, for a covariance)")
    if splits < 1:
        raise EvalError(f"splits must be >= 1, got {splits}")
    if size < 2:
        raise EvalError(f"the FD needs at least 2 samples per set, got size {size}")
    g = torch.Generator().manual_seed(seed)
    halves = [image_halves(n, image_index, g) for _ in range(splits)]
    smallest = min(min(len(a), len(b)) for a, b in halves)
    if smallest < 2:
        raise EvalError(f"a split of the {n} representations by image left a half with {smallest} row: one image "
                        f"holds most of them; an FD floor needs at least 2 rows on each side")
    m = min(size, min(len(a) for a, _ in halves))
    fds = []
    for a, b in halves:
        sub = a[torch.randperm(len(a), generator=g)[:m]]
        fds.append(frechet_distance(*feature_stats(feats[sub]), *feature_stats(feats[b])))
    fds = np.array(fds)
    heldout, reference = halves[0]
    dim = feats.shape[1] if feats.dim() > 1 else 1
    notes = []
    if m < size:
        notes.append(f"only {n} real representations: {m} samples instead of {size} (the held-out half's size)")
    if m <= dim:
        notes.append(f"{m} samples in {dim} dimensions: their covariance is singular, so FD and floor are dominated "
                     f"by the small-sample bias; compare ratios, not absolute values")
    return {"mean": float(fds.mean()), "std": float(fds.std(ddof=1)) if splits > 1 else 0.0, "splits": splits,
            "size": m, "reference_size": len(reference), "heldout_size": len(heldout),
            "by": "row" if image_index is None else "image", "all": fds.tolist(),
            "reference": reference, "heldout": heldout, "notes": notes}


def rep_fd_plan(feats: torch.Tensor, fd_samples: int, image_index: Optional[torch.Tensor] = None, seed: int = 0,
                subsets: int = 200, splits: int = 20, min_ratio: float = SUBSETS_MIN_RATIO) -> dict:
    """What the representation-FD check compares: the protocol ("subsets" when N >= ``min_ratio`` m, else
    "halves"; see SUBSETS_MIN_RATIO), the number of samples m, the real rows the samples are compared with
    (``reference``: None = all), ``pick`` (m real rows whose labels a class-conditional model's samples take:
    from the reference rows) and the ``floor`` (a :func:`subset_fd_floor` or :func:`split_fd_floor` dict)."""
    n = len(feats)
    if fd_samples < 1:
        raise EvalError(f"fd_samples must be >= 1, got {fd_samples}")
    m = min(fd_samples, n)
    g = torch.Generator().manual_seed(seed)
    if n >= min_ratio * m:        # today's protocol, bit for bit: same seed for the label pick and the floor
        pick = torch.randperm(n, generator=g)[:m]
        floor = subset_fd_floor(feats, m, subsets, seed=seed)
        return {"protocol": "subsets", "samples": m, "reference": None, "reference_size": n, "pick": pick,
                "floor": floor, "floor_sets": floor["subsets"], "notes": []}
    floor = split_fd_floor(feats, fd_samples, image_index, splits, seed=seed)
    m, reference = floor["size"], floor["reference"]
    g = torch.Generator().manual_seed(seed + 1)                                # not split 0's own draw
    pick = reference[torch.randperm(len(reference), generator=g)[:m]]       # m <= |A| <= |B|
    return {"protocol": "halves", "samples": m, "reference": reference, "reference_size": len(reference),
            "pick": pick, "floor": floor, "floor_sets": floor["splits"], "notes": floor["notes"]}


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """FID (the Fréchet distance of two Gaussians) from means (D,) and covariances (D, D), with shape checks."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise EvalError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}; "
                        f"they come from different feature networks (or layers)")
    if not (np.isfinite(mu1).all() and np.isfinite(mu2).all() and np.isfinite(s1).all() and np.isfinite(s2).all()):
        raise EvalError("statistics contain NaN or Inf; the features (or the reference file) are broken")
    return frechet_distance(mu1, s1, mu2, s2)


# ------------------------------------------------------------------------------------------------
# Inception Score, precision and recall
# ------------------------------------------------------------------------------------------------
def inception_score(probs: torch.Tensor, splits: int = 10, shuffle: bool = True, seed: int = 2020,
                    from_logits: bool = False) -> Tuple[float, float]:
    """(mean, std) over ``splits`` of exp(mean_x KL(p(y|x) || p(y))), p(y) the split's mean prediction.

    ``probs`` are (N, C) class probabilities, or logits with ``from_logits=True`` (the more accurate
    path, used for Inception's unbiased logits). torch-fidelity semantics: rows are first permuted
    with ``np.random.RandomState(seed)`` when ``shuffle``; splits are ``[i*N//splits, (i+1)*N//splits)``.
    ``splits`` larger than N is lowered to N.
    """
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or probs.shape[0] == 0:
        raise EvalError(f"inception_score expects a non-empty (N, C) tensor, got "
                        f"{tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__}")
    if splits < 1:
        raise EvalError(f"splits must be >= 1, got {splits}")
    n = probs.shape[0]
    splits = min(splits, n)
    x = probs.detach().cpu()
    if shuffle:
        x = x[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    x = x.double()
    if from_logits:
        log_p = x.log_softmax(dim=1)
        p = x.softmax(dim=1)
    else:
        if (x < 0).any() or not torch.allclose(x.sum(1), torch.ones(n, dtype=x.dtype), atol=1e-3):
            raise EvalError("inception_score: rows must be probabilities (non-negative, summing to 1); "
                            "pass from_logits=True for logits")
        p = x / x.sum(1, keepdim=True)
        log_p = torch.log(p)
    scores = []
    for i in range(splits):
        sl = slice(i * n // splits, (i + 1) * n // splits)
        p_c, log_p_c = p[sl], log_p[sl]
        q = p_c.mean(0, keepdim=True)
        kl = torch.where(p_c > 0, p_c * (log_p_c - q.log()), torch.zeros_like(p_c))   # 0 log 0 = 0
        scores.append(kl.sum(1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _kth_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of every row of ``x`` to its k-th nearest other row (the (k+1)-th smallest, self included)."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cat([torch.cdist(x[i:i + chunk], x[j:j + chunk]) for j in range(0, len(x), chunk)], dim=1)
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _covered(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each row of ``points``: does it lie within ``radii[j]`` of some ``centers[j]``?"""
    out = []
    for i in range(0, len(points), chunk):
        hit = torch.zeros(len(points[i:i + chunk]), dtype=torch.bool, device=points.device)
        for j in range(0, len(centers), chunk):
            d = torch.cdist(points[i:i + chunk], centers[j:j + chunk])
            hit |= (d <= radii[j:j + chunk].unsqueeze(0)).any(dim=1)
        out.append(hit)
    return torch.cat(out)


@torch.no_grad()
def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3, chunk: int = 10000,
                     device=None) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), as torch-fidelity computes them.

    Each set's manifold is the union of balls around its points whose radius is the distance to the
    point's k-th nearest neighbour within the set. Precision: fraction of fake points inside the real
    manifold; recall: fraction of real points inside the fake manifold. Distances are computed in
    ``chunk`` x ``chunk`` blocks (float32, on ``device``: default the features' device)."""
    for name, t in (("real", real_feats), ("fake", fake_feats)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise EvalError(f"precision_recall: {name} features must be an (N, D) tensor")
        if len(t) < k + 1:
            raise EvalError(f"precision_recall with k={k} needs at least {k + 1} {name} samples, got {len(t)}")
    if real_feats.shape[1] != fake_feats.shape[1]:
        raise EvalError(f"precision_recall: feature sizes differ ({real_feats.shape[1]} vs {fake_feats.shape[1]})")
    dev = torch.device(device) if device is not None else real_feats.device
    real, fake = real_feats.to(dev, torch.float32), fake_feats.to(dev, torch.float32)
    real_r, fake_r = _kth_radii(real, k, chunk), _kth_radii(fake, k, chunk)
    precision = _covered(fake, real, real_r, chunk).float().mean().item()
    recall = _covered(real, fake, fake_r, chunk).float().mean().item()
    return precision, recall


# ------------------------------------------------------------------------------------------------
# Feature networks and streaming statistics
# ------------------------------------------------------------------------------------------------
class FeatureNet:
    """What the metrics need from a feature network.

    ``name`` and ``weights_sha256`` identify the network (results and reference caches record them);
    ``metric_suffix`` is appended to metric names (``""`` for Inception: ``fid``, ``is``; ``"_dom"`` for a
    domain classifier: ``fid_dom``, ``is_dom``). Subclasses implement :meth:`features_and_logits`:
    uint8 ``(B, C, H, W)`` images on any device -> (features ``(B, F)`` float32, logits ``(B, K)`` float32
    or None when the network has no classifier). Outputs stay on the network's device.
    """
    name: str = "feature-net"
    weights_sha256: str = ""
    metric_suffix: str = ""
    device: torch.device = torch.device("cpu")

    def features_and_logits(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]

    def logits(self, images: torch.Tensor) -> Optional[torch.Tensor]:
        return self.features_and_logits(images)[1]


def check_images(images, what: str = "images") -> torch.Tensor:
    """Refuse anything but a non-empty uint8 (B, C, H, W) tensor with 1 or 3 channels."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
            or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        desc = f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) \
            else type(images).__name__
        raise EvalError(f"{what}: expected a non-empty uint8 tensor (B, C, H, W) with C = 1 or 3, got {desc}")
    return images


class StreamingStats:
    """Running mean/covariance of features (float64 sums, shifted by the first batch's mean for
    accuracy), the first ``max_keep`` features (for precision/recall) and, when ``keep_logits``,
    every logit row (for the Inception Score). Sums live on the features' device."""

    def __init__(self, max_keep: int = DEFAULT_MAX_KEEP, keep_logits: bool = True):
        if max_keep < 0:
            raise EvalError(f"max_keep must be >= 0, got {max_keep}")
        self.max_keep, self.keep_logits = max_keep, keep_logits
        self.n = 0
        self._shift = self._sum = self._outer = None
        self._kept, self._num_kept, self._logits = [], 0, []
        self._has_logits: Optional[bool] = None

    def update(self, feats: torch.Tensor, logits: Optional[torch.Tensor] = None) -> None:
        if feats.dim() != 2 or feats.shape[0] == 0:
            raise EvalError(f"features must be a non-empty (B, D) tensor, got shape {tuple(feats.shape)}")
        x = feats.detach().double()
        if not torch.isfinite(x).all():
            raise EvalError("the feature network produced NaN or Inf features")
        if self._shift is None:
            self._shift = x.mean(0)
            self._sum = torch.zeros_like(self._shift)
            self._outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        elif x.shape[1] != self._shift.shape[0]:
            raise EvalError(f"feature size changed from {self._shift.shape[0]} to {x.shape[1]} within one stream")
        d = x.to(self._shift.device) - self._shift
        self._sum += d.sum(0)
        self._outer += d.T @ d
        self.n += x.shape[0]
        if self._num_kept < self.max_keep:
            part = feats[:self.max_keep - self._num_kept].detach().float().cpu()
            self._kept.append(part)
            self._num_kept += len(part)
        has = logits is not None
        if self._has_logits is not None and has != self._has_logits:
            raise EvalError("some batches came with logits and others without")
        self._has_logits = has
        if has and self.keep_logits:
            self._logits.append(logits.detach().float().cpu())

    @property
    def dim(self) -> int:
        return 0 if self._shift is None else int(self._shift.shape[0])

    def mean(self) -> np.ndarray:
        self._need(1)
        return (self._shift + self._sum / self.n).cpu().numpy()

    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by n - 1, like ``np.cov``)."""
        self._need(2)
        m = self._sum / self.n
        c = (self._outer - self.n * torch.outer(m, m)) / (self.n - 1)
        return ((c + c.T) / 2).cpu().numpy()

    def stats(self) -> Tuple[np.ndarray, np.ndarray]:
        return self.mean(), self.cov()

    def kept_features(self) -> torch.Tensor:
        return torch.cat(self._kept) if self._kept else torch.zeros(0, self.dim)

    def logits(self) -> Optional[torch.Tensor]:
        return torch.cat(self._logits) if self._logits else None

    def _need(self, n: int) -> None:
        if self.n < n:
            raise EvalError(f"need at least {n} samples for these statistics, got {self.n}")


# ------------------------------------------------------------------------------------------------
# Reference statistics
# ------------------------------------------------------------------------------------------------
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
        import io
        from .store import atomic_write
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
    if hasattr(source, "images") and isinstance(source.images, torch.Tensor):
        source = source.images
    if isinstance(source, torch.Tensor):
        source = iterate_tensor(source, batch_size)
    st = _accumulate(source, net, StreamingStats(max_keep=max_keep, keep_logits=False), progress, "reference")
    ref = reference_from_stats(st, net, source_name)
    if cache is not None:
        ref.save(cache)
        print(f"wrote reference statistics {cache} ({ref.num} images, {net.name})")
    return ref


# ------------------------------------------------------------------------------------------------
# Evaluation of a stream of generated images
# ------------------------------------------------------------------------------------------------
def _num_images(batches) -> Optional[int]:
    n = getattr(batches, "num_images", None)
    return int(n) if n is not None else None


def _accumulate(batches: Iterable[torch.Tensor], net: FeatureNet, stats: StreamingStats, progress: bool, desc: str,
                rep_encoder=None, rep_stats: Optional[StreamingStats] = None) -> StreamingStats:
    from tqdm.auto import tqdm
    bar = tqdm(total=_num_images(batches), unit="img", unit_scale=True, desc=desc, disable=not progress,
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


def _as_reference(ref, what: str) -> Reference:
    if isinstance(ref, Reference):
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
        raise EvalError(f"net must be a FeatureNet (rcg.inception.InceptionV3, rcg.evalnet.EvalNet), "
                        f"got {type(net).__name__}")
    if (rep_encoder is None) != (rep_reference is None):
        raise EvalError("representation FD needs both rep_encoder and rep_reference")
    ref = _as_reference(reference, "reference") if reference is not None else None
    if ref is not None:
        _check_reference_net(ref, net, "the reference statistics")
    rep_ref = _as_reference(rep_reference, "rep_reference") if rep_reference is not None else None
    rep_fp = None
    if rep_encoder is not None:
        from .encoders import fingerprint
        rep_fp = fingerprint(rep_encoder)
        if rep_ref.feature_net_sha256 and rep_ref.feature_net_sha256 != rep_fp:
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


# ------------------------------------------------------------------------------------------------
# Image sources: uint8 (B, C, H, W) batches from tensors, image folders and npz files
# ------------------------------------------------------------------------------------------------
class TensorSource:
    """Batches of an in-memory uint8 (N, C, H, W) tensor."""

    def __init__(self, images: torch.Tensor, batch_size: int = 500):
        self.images = check_images(images, "images")
        self.batch_size = _check_batch_size(batch_size)
        self.num_images = len(images)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(0, self.num_images, self.batch_size):
            yield self.images[i:i + self.batch_size]


def iterate_tensor(images: torch.Tensor, batch_size: int = 500) -> TensorSource:
    return TensorSource(images, batch_size)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise EvalError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


class ImageFolderSource:
    """Batches decoded from every image file under ``path`` (recursive, sorted like ``rcg.data``).

    ``resolution`` None keeps the files' own size (all must then be square and equal, as sample folders
    are; no resampling, like torch-fidelity); otherwise shorter side to ``resolution`` (bicubic) and
    centre crop, as ``rcg.data`` loads folders. ``channels`` None: 1 when the first file is grayscale,
    else 3 (RGB). ``workers`` threads decode in parallel."""

    def __init__(self, path, batch_size: int = 250, resolution: Optional[int] = None,
                 channels: Optional[int] = None, limit: int = 0, workers: int = 4):
        from PIL import Image
        from .data import IMAGE_EXTENSIONS, check_channels, check_resolution
        root = Path(path)
        if not root.is_dir():
            raise EvalError(f"image folder {root} does not exist or is not a directory")
        self.batch_size = _check_batch_size(batch_size)
        files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                       key=lambda p: p.relative_to(root).as_posix())
        if not files:
            raise EvalError(f"no image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) under {root}")
        if limit:
            files = files[:limit]
        try:
            with Image.open(files[0]) as im:
                size, mode = im.size, im.mode
        except Exception as e:
            raise EvalError(f"cannot read {files[0]} as an image ({type(e).__name__}: {e})") from e
        if resolution is None:
            if size[0] != size[1]:
                raise EvalError(f"{files[0]} is {size[0]}x{size[1]}, not square; pass a resolution to resize and "
                                f"centre-crop the images")
            resolution, self._native = size[0], True
        else:
            self._native = False
        check_resolution(resolution)
        if channels is None:
            channels = 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
        check_channels(channels)
        self.root, self.files, self.resolution, self.channels = root, files, int(resolution), channels
        self.workers = max(1, int(workers))
        self.num_images = len(files)

    def _read(self, p: Path) -> np.ndarray:
        from PIL import Image
        from .data import decode_image
        try:
            if self._native:
                with Image.open(p) as im:
                    if im.size != (self.resolution, self.resolution):
                        raise EvalError(f"{p} is {im.size[0]}x{im.size[1]} but the folder's first image is "
                                        f"{self.resolution}x{self.resolution}; pass a resolution to resize all")
            return decode_image(p, self.resolution, self.channels)
        except EvalError:
            raise
        except Exception as e:
            raise EvalError(f"cannot read {p} as an image ({type(e).__name__}: {e})") from e

    def __iter__(self) -> Iterator[torch.Tensor]:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(self.workers) as pool:
            for i in range(0, self.num_images, self.batch_size):
                arrays = list(pool.map(self._read, self.files[i:i + self.batch_size]))
                yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def iterate_image_folder(path, batch_size: int = 250, resolution: Optional[int] = None,
                         channels: Optional[int] = None, limit: int = 0, workers: int = 4) -> ImageFolderSource:
    """uint8 (B, C, H, W) batches of the images under ``path`` (see :class:`ImageFolderSource`)."""
    return ImageFolderSource(path, batch_size, resolution, channels, limit, workers)


def _read_npy_header(f):
    """(shape, fortran_order, dtype) of the .npy stream ``f``, leaving it at the start of the data."""
    from numpy.lib import format as npf
    version = npf.read_magic(f)
    if version == (1, 0):
        return npf.read_array_header_1_0(f)
    if version == (2, 0):
        return npf.read_array_header_2_0(f)
    return npf._read_array_header(f, version)      # .npy format 3.0 (utf-8 field names); no public reader


def _npz_layout(shape: tuple, path) -> str:
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4 and shape[-1] in (1, 3):
        return "NHWC"
    if len(shape) == 4 and shape[1] in (1, 3):
        return "NCHW"
    raise EvalError(f"{path}: images of shape {shape}; expected (N, H, W, C) as ADM/OpenAI sample files, "
                    f"(N, C, H, W) or (N, H, W), with C = 1 or 3")


def _to_nchw(a: np.ndarray, layout: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if layout == "NHW":
        return t.unsqueeze(1)
    if layout == "NHWC":
        return t.permute(0, 3, 1, 2).contiguous()
    return t


class NpzSource:
    """Batches of a uint8 image array in an ``.npz`` (key ``arr_0`` as ADM/OpenAI sample files, or the
    only array) or ``.npy`` file, read in pieces so that a 50K x 256 px file never sits in memory whole."""

    def __init__(self, path, batch_size: int = 500, key: Optional[str] = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sample file {path} does not exist")
        self.path, self.batch_size = path, _check_batch_size(batch_size)
        self.key = None
        if path.suffix == ".npy":
            shape, dtype = self._npy_header_from(path.open("rb"))
        else:
            try:
                with zipfile.ZipFile(path) as zf:
                    names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                    if key is None:
                        key = "arr_0" if "arr_0" in names else (names[0] if len(names) == 1 else None)
                        if key is None:
                            raise EvalError(f"{path} holds {', '.join(names) or 'no arrays'}; images are read from "
                                            f"'arr_0' (or the only array): name the key")
                    if key not in names:
                        raise EvalError(f"{path} has no array {key!r} (it has: {', '.join(names)})")
                    with zf.open(key + ".npy") as f:
                        shape, dtype = self._npy_header_from(f)
            except zipfile.BadZipFile as e:
                raise EvalError(f"{path} is not an npz file ({e})") from e
            self.key = key
        if dtype != np.uint8:
            raise EvalError(f"{path}: images must be uint8 (0..255), found {dtype}; convert them "
                            f"(e.g. (x * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1])")
        self.layout = _npz_layout(tuple(shape), path)
        self.shape = tuple(shape)
        self.num_images = int(shape[0])
        if self.num_images == 0:
            raise EvalError(f"{path} holds no images")

    @staticmethod
    def _npy_header_from(f):
        with f:
            shape, fortran, dtype = _read_npy_header(f)
        if fortran and len(shape) > 1:
            raise EvalError("Fortran-ordered image arrays are not supported; save with np.ascontiguousarray")
        return shape, dtype

    def __iter__(self) -> Iterator[torch.Tensor]:
        item = int(np.prod(self.shape[1:]))
        if self.key is None:
            f = self.path.open("rb")
        else:
            zf = zipfile.ZipFile(self.path)
            f = zf.open(self.key + ".npy")
        try:
            _read_npy_header(f)
            for i in range(0, self.num_images, self.batch_size):
                n = min(self.batch_size, self.num_images - i)
                raw = f.read(n * item)
                if len(raw) != n * item:
                    raise EvalError(f"{self.path}: truncated array (ended at image {i + len(raw) // item})")
                a = np.frombuffer(bytearray(raw), dtype=np.uint8).reshape((n,) + self.shape[1:])
                yield _to_nchw(a, self.layout)
        finally:
            f.close()
            if self.key is not None:
                zf.close()


def iterate_npz(path, batch_size: int = 500, key: Optional[str] = None) -> NpzSource:
    """uint8 (B, C, H, W) batches of the images in an npz/npy file (see :class:`NpzSource`)."""
    return NpzSource(path, batch_size, key)

