"""Metrics on features: kNN accuracy of representations, Fréchet distances and their real-data floors, FID from
statistics, the Inception Score and precision/recall.

Semantics follow torch-fidelity: IS from the unbiased logits (10 splits after a fixed shuffle with seed 2020,
mean over splits of exp(E KL(p(y|x) || p(y)))), precision/recall of Kynkäänniemi et al. 2019 with k = 3 (a point
is covered when it lies within the distance of some other set's point to that point's k-th nearest neighbour).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F


class EvalError(ValueError):
    """Bad evaluation input: mismatched feature networks, too few samples, unreadable sample files."""


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
    fds = np.array([fd_between(feats[a[torch.randperm(len(a), generator=g)[:m]]], feats[b]) for a, b in halves])
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


def rep_adherence(cond_reps: torch.Tensor, gen_reps: torch.Tensor, gen_pred: torch.Tensor, labels: torch.Tensor,
                  src_pred: torch.Tensor, seed: int = 0) -> dict:
    """How closely images generated from given representations follow them (``benchmarks/rep_adherence.py``).

    ``cond_reps`` (N, D): the conditioning representations of N source images; ``gen_reps`` (N, D): the
    representations of the images generated from them; ``gen_pred`` / ``src_pred`` (N,): a classifier's classes of
    the generated and source images; ``labels`` (N,): the sources' classes. Returns class agreement (generated
    image i has source i's label) against the same for a shuffled pairing and the classifier's accuracy on the
    sources; the mean cosine of generated i with conditioning i, with a shuffled j, and with the other sources of
    i's class; retrieval top-1 (conditioning i is the nearest of the N to generated i)."""
    n = len(cond_reps)
    if n < 2 or gen_reps.shape != cond_reps.shape or not (len(gen_pred) == len(labels) == len(src_pred) == n):
        raise EvalError(f"rep_adherence needs N >= 2 pairs of equal shapes, got reps {tuple(cond_reps.shape)} and "
                        f"{tuple(gen_reps.shape)}, {len(gen_pred)} / {len(src_pred)} predictions, {len(labels)} labels")
    a, b = F.normalize(cond_reps.double(), dim=1), F.normalize(gen_reps.double(), dim=1)
    sim = b @ a.T                                   # sim[i, j]: generated i against conditioning j
    shift = int(torch.randint(1, n, (1,), generator=torch.Generator().manual_seed(seed)))    # no fixed point
    perm = (torch.arange(n) + shift) % n
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool)
    return {"class_agreement": (gen_pred == labels).double().mean().item(),
            "class_agreement_shuffled": (gen_pred == labels[perm]).double().mean().item(),
            "classifier_accuracy_sources": (src_pred == labels).double().mean().item(),
            "rep_cosine": sim.diagonal().mean().item(),
            "rep_cosine_shuffled": sim[torch.arange(n), perm].mean().item(),
            "rep_cosine_same_class": sim[same].mean().item() if same.any() else float("nan"),
            "retrieval_top1": (sim.argmax(1) == torch.arange(n)).double().mean().item()}
