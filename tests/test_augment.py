"""Colour jitter (``rcg.augment.color_jitter``) against torchvision's ``ColorJitter``, the independent reference:
each op per image, the random-order composition, the distribution of whole views, determinism, 1-channel
images, and the MoCo v3 ``ViewSpec`` wiring."""
import math

import pytest
import torch
import torchvision.transforms.v2 as tv2
import torchvision.transforms.v2.functional as TF
from scipy import stats

from rcg import augment as A

TV_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)   # torchvision's fn_idx


def colourful(n, size=8, seed=0, channels=3):
    """Images in [0, 1] with saturated base colours, gradients, some pixels at 0 / 1, some grey pixels and
    some ties between the largest channels (the edge cases of RGB -> HSV)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, channels, 1, 1, generator=g)
    base = torch.where(torch.rand(n, channels, 1, 1, generator=g) < 0.3, base.round(), base)  # saturated
    ramp = torch.linspace(-0.3, 0.3, size).view(1, 1, 1, size) * torch.randn(n, channels, 1, 1, generator=g)
    x = (base + ramp + 0.1 * torch.randn(n, channels, size, size, generator=g)).clamp(0, 1)
    if channels == 3:
        x[:, :, 0, :2] = x[:, :1, 0, :2]             # grey pixels (r = g = b)
        x[:, 1, 1, :2] = x[:, 0, 1, :2]              # r = g ties
        x[:, 2, 2, :2] = x[:, 1, 2, :2]              # g = b ties
    return x


def params(n, apply=None, fb=None, fc=None, fs=None, fh=None, order=None, seed=0):
    """JitterParams with the given per-image values; unset ones are the identity (random order by default)."""
    g = torch.Generator().manual_seed(seed)
    one = torch.ones(n)
    return A.JitterParams(
        apply=torch.ones(n, dtype=torch.bool) if apply is None else apply,
        brightness=one if fb is None else fb, contrast=one if fc is None else fc,
        saturation=one if fs is None else fs, hue=torch.zeros(n) if fh is None else fh,
        order=torch.rand(n, 4, generator=g).argsort(1) if order is None else order)


def tv_reference(x, p):
    """torchvision's ColorJitter.transform, one image at a time, with the same factors and order."""
    out = []
    for i in range(x.shape[0]):
        im = x[i]
        if p.apply[i]:
            factors = (p.brightness[i], p.contrast[i], p.saturation[i], p.hue[i])
            for k in p.order[i].tolist():
                im = TV_OPS[k](im, float(factors[k]))
        out.append(im)
    return torch.stack(out)


# ------------------------------------------------------------------------------------------------
# (a) each op, and their composition, equal torchvision's functional ops
# ------------------------------------------------------------------------------------------------
def test_hue_shift_matches_torchvision_adjust_hue():
    x = colourful(48, seed=1)
    shifts = torch.linspace(-0.5, 0.5, 48)             # the whole allowed range, both ends included
    ours = A._hue_shift(x, shifts)
    ref = torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(48)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert (ours - x).abs().amax() > 0.3               # a real shift (not a vacuous identity)


@pytest.mark.parametrize("op", [0, 1, 2, 3], ids=["brightness", "contrast", "saturation", "hue"])
def test_single_op_matches_torchvision(op):
    n = 40
    x = colourful(n, seed=2)
    g = torch.Generator().manual_seed(3)
    f = torch.rand(n, generator=g) * 1.6 + 0.2 if op < 3 else torch.rand(n, generator=g) - 0.5
    p = params(n, **{("fb", "fc", "fs", "fh")[op]: f}, seed=op)
    ours = A.apply_jitter(x, p)
    ref = torch.stack([TV_OPS[op](x[i], float(f[i])) for i in range(n)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert (ours - x).abs().amax() > 0.1


@pytest.mark.parametrize("channels", [3, 1])
def test_random_order_composition_matches_torchvision(channels):
    """Drawn factors (large magnitudes, so clamping after every op matters) and per-image orders: the batched
    rounds equal torchvision applying the four ops one image at a time in each image's order."""
    n = 64
    x = colourful(n, seed=4, channels=channels)
    p = A.jitter_params(n, 0.9, 0.9, 0.9, 0.5, 0.8, torch.Generator().manual_seed(5))
    assert 0 < p.apply.sum() < n
    ours = A.apply_jitter(x, p)
    torch.testing.assert_close(ours, tv_reference(x, p), atol=1e-5, rtol=0)
    assert torch.equal(ours[~p.apply], x[~p.apply])


def test_clamps_after_every_op():
    """Brightness x1.8 then contrast x0.5: torchvision clamps the over-exposed pixels before the contrast
    blend; clamping only at the end (the old behaviour) gives visibly different images."""
    n = 8
    x = colourful(n, seed=6)
    order = torch.tensor([0, 1, 2, 3]).repeat(n, 1)
    p = params(n, fb=torch.full((n,), 1.8), fc=torch.full((n,), 0.5), order=order)
    ours = A.apply_jitter(x, p)
    torch.testing.assert_close(ours, tv_reference(x, p), atol=1e-5, rtol=0)
    y = x * 1.8
    m = A._luma(y).mean((2, 3), keepdim=True)
    clamp_at_end = ((y - m) * 0.5 + m).clamp(0, 1)
    assert (ours - clamp_at_end).abs().amax() > 0.05


# ------------------------------------------------------------------------------------------------
# the draws
# ------------------------------------------------------------------------------------------------
def test_color_jitter_is_its_draws_applied():
    x = colourful(32, seed=7)
    out = A.color_jitter(x, 0.4, 0.4, 0.2, 0.8, torch.Generator().manual_seed(8), hue=0.1)
    p = A.jitter_params(32, 0.4, 0.4, 0.2, 0.1, 0.8, torch.Generator().manual_seed(8))
    assert torch.equal(out, A.apply_jitter(x, p))


def test_jitter_params_ranges_and_uniform_permutations():
    n = 24000
    p = A.jitter_params(n, 0.4, 1.5, 0.2, 0.1, 0.8, torch.Generator().manual_seed(9))
    for t in (p.apply, p.brightness, p.contrast, p.saturation, p.hue, p.order):
        assert t.device.type == "cpu" and t.shape[0] == n
    assert abs(p.apply.float().mean().item() - 0.8) < 4 * math.sqrt(0.8 * 0.2 / n)
    for f, lo, hi in ((p.brightness, 0.6, 1.4), (p.contrast, 0.0, 2.5), (p.saturation, 0.8, 1.2),
                      (p.hue, -0.1, 0.1)):   # contrast 1.5: torchvision clips the lower end at 0
        assert f.min() >= lo and f.max() <= hi
        assert stats.kstest(((f - lo) / (hi - lo)).numpy(), "uniform").pvalue > 1e-3
    assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(n, 4))   # every row a permutation
    code = (p.order * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.bincount(code, minlength=256)[code.unique()]
    assert len(counts) == 24
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3                     # the 24 orders equally likely


def test_zero_magnitudes_are_the_identity():
    x = colourful(16, seed=10)
    assert torch.equal(A.color_jitter(x, 0.0, 0.0, 0.0, 1.0, torch.Generator().manual_seed(0), hue=0.0), x)
    with pytest.raises(ValueError):
        A.color_jitter(x, 0.4, 0.4, 0.2, 1.0, torch.Generator().manual_seed(0), hue=0.6)


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_input_is_not_modified(p):
    """Hue as the first op of every image (no blend before it) must not write into the caller's tensor."""
    x = colourful(16, seed=19)
    keep = x.clone()
    order = torch.tensor([3, 0, 1, 2]).repeat(16, 1)
    apply = torch.rand(16, generator=torch.Generator().manual_seed(1)) < p
    out = A.apply_jitter(x, params(16, apply=apply, fh=torch.full((16,), 0.25), order=order))
    assert torch.equal(x, keep)
    assert (out - x).abs().amax() > 0.1
    A.color_jitter(x, 0.4, 0.4, 0.2, p, torch.Generator().manual_seed(2), hue=0.1)
    assert torch.equal(x, keep)


def test_images_not_jittered_are_returned_as_they_are():
    """Even out of [0, 1] (where a pass through the identity blend would clamp them), images whose apply flag
    is off come back bit-for-bit, as with torchvision's RandomApply."""
    x = colourful(32, seed=20) * 1.4 - 0.2
    p = A.jitter_params(32, 0.4, 0.4, 0.2, 0.1, 0.5, torch.Generator().manual_seed(3))
    assert 0 < p.apply.sum() < 32
    out = A.apply_jitter(x, p)
    assert torch.equal(out[~p.apply], x[~p.apply])
    assert out[p.apply].min() >= 0 and out[p.apply].max() <= 1


# ------------------------------------------------------------------------------------------------
# (b) the distribution of views equals torchvision's RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
# ------------------------------------------------------------------------------------------------
def _pixel_stats(y):
    """Per-pixel HSV value (max channel), saturation (max - min) / max, luma and colour angle (the hue as an
    angle in the opponent-colour plane), each (B, H, W)."""
    hi, lo = y.amax(1), y.amin(1)
    sat = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi))
    r, g, b = y.unbind(1)
    return hi, sat, 0.299 * r + 0.587 * g + 0.114 * b, torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)


def test_distribution_matches_torchvision_color_jitter():
    """32 colourful images, R = 200 independent views of each by both implementations (all seeds fixed, so the
    test is deterministic).

    Per pixel-channel (6144 of them) the mean and the std over the R views are compared by z = difference /
    standard error (the std's SE by the delta method, sqrt(Var((y - mean)^2) / R) / (2 std)). Each z is about
    N(0, 1) under the null, but the 192 z's of one image share its draws, so they are strongly correlated and
    their extremes heavier than 6144 independent normals: in 200 null runs (this implementation against itself,
    other seeds) the largest |z| was 5.1 (99th percentile 4.3 for means, 4.9 for stds) and the share of |z| > 3
    at most 2.8 %; we require max |z| < 6 and share < 4 %. A missing hue term gives max |z| ~ 10 (std ~ 17), a
    doubled hue range ~ 7 (std ~ 11). Per image (6400 per implementation) the mean HSV value, mean HSV
    saturation, luma std and the saturation-weighted mean hue shift vs the input are compared by their means
    (within 4 SE) and by two-sample KS tests (p > 1e-3 each; the smallest of the four p in those null runs was
    5e-3: stratified samples make KS conservative). The hue-shift KS also catches jitter applied with p = 0.7."""
    n, R = 32, 200
    x = colourful(n, seed=11)
    ours = A.color_jitter(x.repeat(R, 1, 1, 1), 0.4, 0.4, 0.2, 0.8, torch.Generator().manual_seed(12), hue=0.1)
    jitter = tv2.RandomApply([tv2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
    with torch.random.fork_rng():
        torch.manual_seed(13)
        ref = torch.stack([jitter(x[i % n]) for i in range(n * R)])
    ours, ref = ours.view(R, n, 3, 8, 8), ref.view(R, n, 3, 8, 8)

    def z_scores(a, b):
        ma, mb = a.mean(0), b.mean(0)
        sa, sb = a.std(0), b.std(0)
        z_mean = (ma - mb) / ((sa ** 2 + sb ** 2) / R).sqrt().clamp_min(1e-6)
        se_a = ((a - ma) ** 2).std(0) / math.sqrt(R) / (2 * sa.clamp_min(1e-6))
        se_b = ((b - mb) ** 2).std(0) / math.sqrt(R) / (2 * sb.clamp_min(1e-6))
        z_std = (sa - sb) / (se_a ** 2 + se_b ** 2).sqrt().clamp_min(1e-6)
        return z_mean, z_std

    for z in z_scores(ours, ref):
        assert z.abs().max() < 6, z.abs().max()
        assert (z.abs() > 3).float().mean() < 0.04

    def per_image(y):
        v, s, luma, angle = _pixel_stats(y.reshape(R * n, 3, 8, 8))
        _, s_in, _, angle_in = _pixel_stats(x.repeat(R, 1, 1, 1))
        w = s_in * s                                     # hue is only defined where there is colour
        d = angle - angle_in
        shift = torch.atan2((w * d.sin()).sum((1, 2)), (w * d.cos()).sum((1, 2)))
        return {"value": v.mean((1, 2)), "saturation": s.mean((1, 2)), "contrast": luma.std((1, 2)),
                "hue shift": shift}

    a, b = per_image(ours), per_image(ref)
    for k in a:
        se = math.sqrt(a[k].var().item() / len(a[k]) + b[k].var().item() / len(b[k]))
        assert abs(a[k].mean().item() - b[k].mean().item()) < 4 * se, k
        assert stats.ks_2samp(a[k].numpy(), b[k].numpy()).pvalue > 1e-3, k
    assert b["hue shift"].abs().max() > 0.3              # the reference does shift hues (up to 0.1 turn)


# ------------------------------------------------------------------------------------------------
# (c) determinism, (d) 1-channel images, (e) per-image order
# ------------------------------------------------------------------------------------------------
def test_same_seed_same_view_other_seed_other_view():
    x = colourful(16, size=16, seed=14)
    spec = A.ViewSpec()
    v1 = A.ssl_view(x, 12, spec, torch.Generator().manual_seed(1))
    v2 = A.ssl_view(x, 12, spec, torch.Generator().manual_seed(1))
    v3 = A.ssl_view(x, 12, spec, torch.Generator().manual_seed(2))
    assert torch.equal(v1, v2)
    assert (v1 - v3).abs().amax(dim=(1, 2, 3)).min() > 0      # every image differs
    j1 = A.color_jitter(x, 0.4, 0.4, 0.2, 0.8, torch.Generator().manual_seed(3), hue=0.1)
    j2 = A.color_jitter(x, 0.4, 0.4, 0.2, 0.8, torch.Generator().manual_seed(3), hue=0.1)
    j3 = A.color_jitter(x, 0.4, 0.4, 0.2, 0.8, torch.Generator().manual_seed(4), hue=0.1)
    assert torch.equal(j1, j2) and not torch.equal(j1, j3)


def test_one_channel_unchanged_by_hue_and_saturation():
    x = colourful(16, seed=15, channels=1)
    assert torch.equal(A.color_jitter(x, 0.0, 0.0, 0.9, 1.0, torch.Generator().manual_seed(0), hue=0.5), x)
    # brightness and contrast still act on 1 channel, as torchvision's do
    p = A.jitter_params(16, 0.4, 0.4, 0.9, 0.5, 1.0, torch.Generator().manual_seed(1))
    ours = A.apply_jitter(x, p)
    torch.testing.assert_close(ours, tv_reference(x, p), atol=1e-5, rtol=0)
    assert (ours - x).abs().amax() > 0.05


def test_order_differs_across_images_and_shows_in_the_output():
    """Strong brightness and contrast on bright images: brightness-then-contrast clamps before the blend,
    contrast-then-brightness after, so the two orders give different images. Each output equals the
    torchvision result of its own drawn order (and not the other one), and both orders occur in the batch."""
    n = 64
    x = (colourful(n, seed=16) * 0.5 + 0.45).clamp(0, 1)
    gen_seed = 17
    out = A.color_jitter(x, 0.9, 0.9, 0.0, 1.0, torch.Generator().manual_seed(gen_seed), hue=0.0)
    p = A.jitter_params(n, 0.9, 0.9, 0.0, 0.0, 1.0, torch.Generator().manual_seed(gen_seed))
    pos = p.order.argsort(1)                                   # position of each op in each image's order
    b_first = pos[:, 0] < pos[:, 1]
    bc = torch.stack([TF.adjust_contrast(TF.adjust_brightness(x[i], float(p.brightness[i])), float(p.contrast[i]))
                      for i in range(n)])
    cb = torch.stack([TF.adjust_brightness(TF.adjust_contrast(x[i], float(p.contrast[i])), float(p.brightness[i]))
                      for i in range(n)])
    distinct = (bc - cb).abs().amax(dim=(1, 2, 3)) > 1e-3
    err_bc = (out - bc).abs().amax(dim=(1, 2, 3))
    err_cb = (out - cb).abs().amax(dim=(1, 2, 3))
    assert (b_first & distinct).sum() >= 5 and (~b_first & distinct).sum() >= 5
    assert (err_bc[b_first] < 1e-5).all() and (err_cb[~b_first] < 1e-5).all()
    assert (err_cb[b_first & distinct] > 1e-3).all() and (err_bc[~b_first & distinct] > 1e-3).all()


# ------------------------------------------------------------------------------------------------
# the MoCo v3 ViewSpec
# ------------------------------------------------------------------------------------------------
def test_viewspec_hue_is_the_recipe_and_reaches_the_jitter():
    assert A.ViewSpec().hue == 0.1
    x = colourful(16, size=16, seed=18)
    spec = A.ViewSpec(hue=0.3, gray_p=0.0)
    view = A.ssl_view(x, 12, spec, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    y = A.resized_crop(x, 12, scale=spec.scale, flip_p=spec.flip_p, gen=g)
    y = A.color_jitter(y, spec.brightness, spec.contrast, spec.saturation, spec.jitter_p, g, hue=0.3)
    assert torch.equal(view, y)
    no_hue = A.ssl_view(x, 12, A.ViewSpec(hue=0.0, gray_p=0.0), torch.Generator().manual_seed(5))
    assert not torch.equal(view, no_hue)


def test_fmnist_preset_has_no_colour_jitter_of_colour():
    from rcg.presets import ENCODER_PRESETS
    run = ENCODER_PRESETS["fmnist-encoder"]
    for v in (run.view1, run.view2):
        assert v.hue == 0.0 and v.saturation == 0.0
