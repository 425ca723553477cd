"""Metrics: kNN accuracy of representations, Fréchet distance (representation FD, paper Table 8).

FID/IS/precision-recall on pixels come with the evaluation stage; the Fréchet distance here is the
same formula, applied to any feature vectors.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F


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
