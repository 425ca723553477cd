"""The representation-FD floor on a cache of any size: the "subsets" protocol (big caches, unchanged) and the
image-disjoint "halves" protocol (small caches), and rep_fd_check choosing between them."""
import math

import pytest
import torch

from rcg import stages
from rcg.store import WEIGHTS, prepare_run_dir, save_tensors
from rcg.config import OptimConfig, RDMRun
from rcg.tree import to_dict
from rcg.evaluate import (SUBSETS_MIN_RATIO, EvalError, fd_between, image_halves, rep_fd_plan, split_fd_floor,
                          subset_fd_floor)
from rcg.rdm import RDM, RDMConfig

D = 8


def gauss(n, seed, shift=0.0):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) + shift


def two_sample_expectation(m, n, d=D):
    # Two independent samples of sizes m and n of N(0, I_d): E ||mu_1 - mu_2||^2 = d (1/m + 1/n), and the covariance
    # term Tr(S1 + S2 - 2 (S1 S2)^1/2) ~ ||S1 - S2||_F^2 / 4 with E ||S1 - S2||_F^2 = d (d + 1) (1/m + 1/n)
    # (as test_evaluate's subset-floor test, with the two errors independent instead of shrunk by (1 - m/N))
    return (d + d * (d + 1) / 4) * (1 / m + 1 / n)


def fake_sampler(draw, calls=None):
    """Stands in for stages.sample_reps: ``draw(num, call_number)`` gives the "model's" samples."""
    def sample_reps(run_dir, out=None, num=1000, labels=None, device=None, progress=True, **kw):
        if calls is not None:
            calls.append({"num": num, "labels": labels})
        return {"reps": draw(num, len(calls) if calls is not None else 0)}
    return sample_reps


def cfg_with(fd_samples, seed=0):
    return RDMRun(fd_samples=fd_samples, sample_steps=5, optim=OptimConfig(seed=seed))


# ---------------------------------------------------------------------------------------------------- evaluate
def test_halves_floor_matches_the_two_sample_expectation_for_a_gaussian():
    r = split_fd_floor(gauss(4000, 0), 500, splits=40, seed=1)
    assert (r["size"], r["reference_size"], r["heldout_size"], r["splits"]) == (500, 2000, 2000, 40)
    assert r["mean"] == pytest.approx(two_sample_expectation(500, 2000), rel=0.1)
    assert r["std"] > 0 and min(r["all"]) < r["mean"] < max(r["all"]) and r["notes"] == []
    small = split_fd_floor(gauss(300, 2), 1000, splits=40, seed=1)         # the cache is smaller than the sample
    assert small["size"] == small["reference_size"] == 150
    assert small["mean"] == pytest.approx(two_sample_expectation(150, 150), rel=0.15)


def test_small_cache_gets_a_finite_positive_floor_where_subsets_collapse_to_zero():
    reps = gauss(300, 0)
    assert subset_fd_floor(reps, 300, subsets=3)["mean"] == pytest.approx(0, abs=1e-8)   # the old, degenerate floor
    plan = rep_fd_plan(reps, 1000, seed=17)
    f = plan["floor"]
    assert plan["protocol"] == "halves" and plan["samples"] == 150 and plan["reference_size"] == 150
    assert math.isfinite(f["mean"]) and f["mean"] > 0.05 and f["std"] > 0 and f["splits"] == 20
    assert any("only 300 real representations" in n for n in plan["notes"])
    tiny = rep_fd_plan(gauss(6, 0), 1000)                                   # 3 vs 3 rows in 8 dims: still finite
    assert tiny["samples"] == 3 and math.isfinite(tiny["floor"]["mean"]) and tiny["floor"]["mean"] > 0
    assert any("singular" in n for n in tiny["notes"])
    with pytest.raises(EvalError, match="too few"):
        rep_fd_plan(gauss(3, 0), 1000)
    with pytest.raises(EvalError, match="at least 2 images"):
        split_fd_floor(gauss(8, 0), 4, image_index=torch.zeros(8, dtype=torch.long))


def test_halves_share_no_image_and_views_of_one_image_make_a_row_split_look_too_close():
    g = torch.Generator().manual_seed(0)
    image_index = torch.arange(200).repeat(3)                               # 3 augmented views of 200 images
    reps = torch.randn(200, D, generator=g).repeat(3, 1) + 0.3 * torch.randn(600, D, generator=g)
    for s in range(5):
        a, b = image_halves(600, image_index, torch.Generator().manual_seed(s))
        assert set(image_index[a].tolist()).isdisjoint(image_index[b].tolist())
        assert sorted(a.tolist() + b.tolist()) == list(range(600)) and len(a) == len(b) == 300
    by_image = split_fd_floor(reps, 1000, image_index, seed=1)
    assert set(image_index[by_image["heldout"]].tolist()).isdisjoint(image_index[by_image["reference"]].tolist())
    assert by_image["by"] == "image" and by_image["size"] == 300
    by_row = split_fd_floor(reps, 1000, None, seed=1)                       # halves sharing images: far too easy
    assert by_row["by"] == "row" and by_image["mean"] > 2 * by_row["mean"]
    # uneven views: still disjoint, and the held-out half never outgrows the reference half
    uneven = torch.repeat_interleave(torch.arange(50), torch.randint(1, 6, (50,), generator=g))
    a, b = image_halves(len(uneven), uneven, torch.Generator().manual_seed(3))
    assert set(uneven[a].tolist()).isdisjoint(uneven[b].tolist()) and len(a) <= len(uneven) / 2 <= len(b)


# ---------------------------------------------------------------------------------------------------- rep_fd_check
def test_perfect_model_scores_about_one_under_halves_and_a_shifted_one_clearly_more(monkeypatch):
    reps = gauss(2000, 0)                                                   # 2000 < 20 x 1000: halves
    perfect, shifted = [], []
    for k in range(5):
        monkeypatch.setattr(stages.rdm, "sample_reps", fake_sampler(lambda n, _c, k=k: gauss(n, 100 + k)))
        r = stages.rep_fd_check("unused", reps, None, cfg_with(1000, seed=k), "cpu", False)
        assert r["rep_fd_protocol"] == "halves" and r["rep_fd_samples"] == 1000 and r["rep_fd_reference_size"] == 1000
        perfect.append(r["rep_fd_ratio"])
        monkeypatch.setattr(stages.rdm, "sample_reps", fake_sampler(lambda n, _c, k=k: gauss(n, 200 + k, shift=0.15)))
        shifted.append(stages.rep_fd_check("unused", reps, None, cfg_with(1000, seed=k), "cpu", False)["rep_fd_ratio"])
    assert 0.75 < sum(perfect) / 5 < 1.3
    assert min(shifted) > 2 and min(shifted) > max(perfect)
    # the subsets protocol on the same cache would put the perfect model at ~(N + m) / (N - m) = 3 x its floor
    plan = rep_fd_plan(reps, 1000, seed=17, subsets=20, min_ratio=1)
    assert plan["protocol"] == "subsets"
    subsets_ratio = sum(fd_between(gauss(1000, 100 + k), reps) for k in range(5)) / 5 / plan["floor"]["mean"]
    assert subsets_ratio == pytest.approx(3, rel=0.3) and subsets_ratio > 2 * sum(perfect) / 5


def test_large_cache_keeps_the_subsets_protocol_bit_for_bit(monkeypatch):
    n, m, seed = 2000, 100, 3
    reps, labels = gauss(n, 0), torch.arange(n) % 10
    calls = []
    monkeypatch.setattr(stages.rdm, "sample_reps", fake_sampler(lambda k, _c: gauss(k, 5), calls))
    r = stages.rep_fd_check("unused", reps, labels, cfg_with(m, seed), "cpu", False)
    old_pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 17))[:m]   # the code this replaced
    old_floor = subset_fd_floor(reps, m, stages.rdm.FLOOR_SUBSETS, seed=seed + 17)
    assert n == SUBSETS_MIN_RATIO * m and r["rep_fd_protocol"] == "subsets"
    assert r["rep_fd_floor"] == old_floor["mean"] and r["rep_fd_floor_std"] == old_floor["std"]
    assert r["rep_fd"] == fd_between(gauss(m, 5), reps) and r["rep_fd_ratio"] == r["rep_fd"] / old_floor["mean"]
    assert r["rep_fd_floor_subsets"] == stages.rdm.FLOOR_SUBSETS and r["rep_fd_samples"] == m
    assert r["rep_fd_reference_size"] == n and torch.equal(calls[0]["labels"], labels[old_pick])
    # one row fewer: halves, with the labels of the sampled set drawn from the reference half's rows
    image_index = torch.arange(n - 1) // 2
    calls.clear()
    r = stages.rep_fd_check("unused", reps[:-1], torch.arange(n - 1), cfg_with(m, seed), "cpu", False,
                            image_index=image_index)
    plan = rep_fd_plan(reps[:-1], m, image_index, seed=seed + 17, splits=stages.rdm.FLOOR_SPLITS)
    assert r["rep_fd_protocol"] == "halves" and r["rep_fd_split_by"] == "image"
    assert r["rep_fd_floor"] == plan["floor"]["mean"] and r["rep_fd_floor_subsets"] == stages.rdm.FLOOR_SPLITS
    assert r["rep_fd"] == fd_between(gauss(m, 5), reps[plan["reference"]])
    picked = calls[0]["labels"]                                             # here label = row number
    assert len(picked) == m and set(picked.tolist()) <= set(plan["reference"].tolist())


def test_rep_fd_check_on_a_real_tiny_rdm_run(tmp_path, capsys):
    cfg = RDMRun(model=RDMConfig(in_channels=D, time_embed_dim=16, model_channels=16, num_res_blocks=1),
                 sample_steps=3, fd_samples=1000)
    run_dir, _ = prepare_run_dir(tmp_path / "rdm", to_dict(cfg))
    torch.manual_seed(0)
    save_tensors(run_dir / WEIGHTS, RDM(cfg.model).state_dict())
    reps = gauss(300, 0)
    r = stages.rep_fd_check(run_dir, reps, None, cfg, "cpu", False, image_index=torch.arange(150).repeat(2))
    out = capsys.readouterr().out
    assert r["rep_fd_protocol"] == "halves" and r["rep_fd_samples"] == 150 and r["rep_fd_reference_size"] == 150
    assert all(math.isfinite(r[k]) for k in ("rep_fd", "rep_fd_floor", "rep_fd_floor_std", "rep_fd_ratio"))
    assert r["rep_fd_floor"] > 0 and r["rep_fd_ratio"] == pytest.approx(r["rep_fd"] / r["rep_fd_floor"])
    assert "sampled 150 vs 150 real (half B, by image); floor: 150 real of half A vs half B" in out
    assert "mean +- std of 20 splits" in out and "note: only 300 real representations" in out
