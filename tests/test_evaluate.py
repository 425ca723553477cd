"""Generation metrics: FID / IS / precision-recall semantics, streaming statistics, reference caches,
image sources, and the Inception path against torch-fidelity (random weights, a few tiny images)."""
import numpy as np
import pytest
import scipy.linalg
import torch

from rcg.evaluate import (EvalError, FeatureNet, StreamingStats, evaluate_stream, fd_between,
                          feature_stats, fid_from_stats, inception_score, iterate_image_folder, iterate_npz,
                          iterate_tensor, load_reference, precision_recall, reference_stats, rep_adherence,
                          subset_fd_floor)


class StubNet(FeatureNet):
    """A fixed random projection of 1x8x8 images: features (B, dim), logits (B, classes)."""

    def __init__(self, seed=0, dim=6, classes=5, suffix=""):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(64, dim, generator=g) / 64
        self.v = torch.randn(dim, classes, generator=g)
        self.name, self.weights_sha256, self.metric_suffix = f"stub{seed}", f"{seed:064d}", suffix
        self.calls = 0

    def features_and_logits(self, images):
        self.calls += 1
        f = images.float().flatten(1) @ self.w
        return f, f @ self.v


def images(n, seed=0, c=1, size=8):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ------------------------------------------------------------------------------------------------ FID
def test_fid_of_a_set_with_itself_is_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, dtype=torch.float64, generator=g) @ torch.randn(12, 12, dtype=torch.float64, generator=g)
    # zero up to the matrix square root's rounding, relative to the scale of the covariance (its trace)
    tol = 1e-9 * float(torch.cov(x.T).trace())
    assert fd_between(x, x) == pytest.approx(0.0, abs=tol)
    st = StreamingStats()
    st.update(x)
    assert fid_from_stats(*st.stats(), *st.stats()) == pytest.approx(0.0, abs=tol)


def test_fid_between_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(d, rng), random_spd(d, rng)
    assert abs(s1[0, 1]) > 1e-3                        # non-diagonal covariances
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2)
                     - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # from samples: the streaming statistics of draws from both Gaussians give the same number
    n = 200_000
    a = rng.multivariate_normal(mu1, s1, size=n)
    b = rng.multivariate_normal(mu2, s2, size=n)
    sa, sb = StreamingStats(max_keep=0), StreamingStats(max_keep=0)
    for i in range(0, n, 50_000):
        sa.update(torch.from_numpy(a[i:i + 50_000]).float())
        sb.update(torch.from_numpy(b[i:i + 50_000]).float())
    assert fid_from_stats(*sa.stats(), *sb.stats()) == pytest.approx(expected, rel=0.02)


def test_fid_agrees_with_torch_fidelity():
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((300, 10)), rng.standard_normal((200, 10)) * 1.5 + 0.3
    st1 = {"mu": a.mean(0), "sigma": np.cov(a, rowvar=False)}
    st2 = {"mu": b.mean(0), "sigma": np.cov(b, rowvar=False)}
    ref = fid_statistics_to_metric(st1, st2, verbose=False)["frechet_inception_distance"]
    assert fid_from_stats(st1["mu"], st1["sigma"], st2["mu"], st2["sigma"]) == pytest.approx(ref, rel=1e-8)


def test_subset_floor_matches_the_small_sample_expectation_for_a_gaussian():
    # n samples of N(0, I_d) against the population: E ||mean||^2 = d/n, and Tr(S + I - 2 S^1/2) ~ ||S - I||_F^2 / 4
    # with E ||S - I||_F^2 = d (d + 1) / n; both shrink by (1 - n/N) for a subset of a finite set of N
    d, n, big = 8, 500, 50_000
    feats = torch.randn(big, d, generator=torch.Generator().manual_seed(0))
    r = subset_fd_floor(feats, n, subsets=40, seed=1)
    expected = (d / n + d * (d + 1) / (4 * n)) * (1 - n / big)
    assert r["mean"] == pytest.approx(expected, rel=0.15)
    assert min(r["all"]) < r["mean"] < max(r["all"]) and r["std"] > 0 and len(r["all"]) == 40
    one = subset_fd_floor(feats, n, subsets=1, seed=3)      # one subset: the FD of that very subset
    pick = torch.randperm(big, generator=torch.Generator().manual_seed(3))[:n]
    assert one["mean"] == pytest.approx(fd_between(feats[pick], feats), rel=1e-9) and one["std"] == 0
    assert subset_fd_floor(feats[:600], 600, subsets=2)["mean"] == pytest.approx(0, abs=1e-8)   # the whole set
    with pytest.raises(EvalError, match="subset size"):
        subset_fd_floor(feats[:100], 101)


def test_fid_refuses_mismatched_statistics():
    with pytest.raises(EvalError, match="different feature networks"):
        fid_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ------------------------------------------------------------------------------------------------ IS
def test_inception_score_uniform_is_one_and_confident_balanced_is_the_class_count():
    c = 10
    assert inception_score(torch.full((200, c), 1.0 / c))[0] == pytest.approx(1.0, abs=1e-9)
    onehot = torch.eye(c).repeat(20, 1)                          # 200 rows, each split of 20 holds every class twice
    assert inception_score(onehot, splits=10, shuffle=False) == pytest.approx((c, 0.0), abs=1e-9)
    assert inception_score(onehot, splits=1)[0] == pytest.approx(c, abs=1e-9)
    mean, _ = inception_score(60.0 * onehot, splits=1, from_logits=True)
    assert mean == pytest.approx(c, rel=1e-6)
    mean, _ = inception_score(torch.randn(300, c).softmax(1))
    assert 1.0 <= mean <= c


def test_inception_score_agrees_with_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric
    logits = torch.randn(203, 17) * 3
    ref = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception_score(logits, splits=10, from_logits=True)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-8, abs=1e-12)


def test_inception_score_rejects_logits_passed_as_probabilities():
    with pytest.raises(EvalError, match="from_logits"):
        inception_score(torch.randn(20, 4))


# ------------------------------------------------------------------------------------------------ PR
def test_precision_recall_identical_sets_are_one_and_far_disjoint_sets_zero():
    x = torch.randn(120, 5)
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 1000.0, k=3) == (0.0, 0.0)


def test_precision_recall_agrees_with_torch_fidelity_in_chunks():
    from torch_fidelity.metric_prc import calculate_precision_recall_full
    g = torch.Generator().manual_seed(3)
    real = torch.randn(90, 4, generator=g)
    fake = torch.randn(70, 4, generator=g) * 1.3 + 0.4
    p_ref, r_ref = calculate_precision_recall_full(fake, real, neighborhood=3)   # input1 = generated
    p, r = precision_recall(real, fake, k=3, chunk=16)
    assert (p, r) == pytest.approx((p_ref, r_ref), abs=1e-12)
    assert 0.0 < p < 1.0 and 0.0 < r < 1.0


def test_precision_recall_needs_k_plus_one_samples():
    with pytest.raises(EvalError, match="at least 4"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3)


# ------------------------------------------------------------------------------------------------ streaming
def test_streaming_stats_equal_batch_stats():
    x = torch.randn(257, 9) * 5 + 100.0                       # a large offset: the shifted sums stay exact
    lg = torch.randn(257, 3)
    st = StreamingStats(max_keep=100)
    for a, b in ((0, 1), (1, 50), (50, 199), (199, 257)):      # uneven batches, one of a single row
        st.update(x[a:b], lg[a:b])
    mu, sigma = feature_stats(x)
    assert np.allclose(st.mean(), mu, rtol=0, atol=1e-10)
    assert np.allclose(st.cov(), sigma, rtol=1e-10, atol=1e-9)
    assert torch.equal(st.kept_features(), x[:100]) and torch.equal(st.logits(), lg)
    assert st.n == 257 and st.dim == 9


def test_streaming_stats_refuse_bad_input():
    st = StreamingStats()
    st.update(torch.randn(4, 3))
    with pytest.raises(EvalError, match="feature size"):
        st.update(torch.randn(4, 5))
    with pytest.raises(EvalError, match="NaN"):
        st.update(torch.full((2, 3), float("nan")))
    with pytest.raises(EvalError, match="at least 2"):
        StreamingStats().cov()


# ------------------------------------------------------------------------------------------------ evaluate_stream
def test_evaluate_stream_of_the_reference_images_scores_perfectly():
    net, ims = StubNet(), images(64)
    ref = reference_stats(ims, net, source_name="toy")
    out = evaluate_stream(iterate_tensor(ims, 10), net, ref, progress=False)
    assert out["feature_net"] == "stub0" and out["feature_net_sha256"] == "0" * 64
    assert out["num_samples"] == 64 and out["num_reference"] == 64 and out["feature_dim"] == 6
    assert out["fid"] == pytest.approx(0.0, abs=1e-6)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["pr_k"] == 3
    assert 1.0 <= out["is"] <= 5.0 and out["is_splits"] == 10
    import json
    json.dumps(out)                                         # JSON-able
    other = evaluate_stream(iter([images(64, seed=1) // 4]), net, ref, progress=False)
    assert other["fid"] > 1.0


def test_evaluate_stream_names_domain_metrics_and_representation_fd():
    from rcg.encoders import Encoder, EncoderConfig
    net = StubNet(suffix="_dom")
    enc = Encoder(EncoderConfig(arch="resnet", in_chans=1, widths=(4, 8), depths=(1, 1), mlp_dim=16,
                                rep_dim=8)).eval()
    ims = images(40)
    reps = enc.encode(ims)
    out = evaluate_stream([ims[:25], ims[25:]], net, reference_stats(ims, net), rep_encoder=enc, rep_reference=reps,
                          progress=False)
    assert {"fid_dom", "is_dom", "is_dom_std", "precision", "recall", "rep_fd"} <= set(out)
    assert "fid" not in out and "is" not in out
    assert out["rep_fd"] == pytest.approx(0.0, abs=1e-5) and out["rep_num_reference"] == 40
    with pytest.raises(EvalError, match="both"):
        evaluate_stream([ims], net, None, rep_encoder=enc, progress=False)


def test_evaluate_stream_refuses_bad_batches_and_mismatched_references():
    net = StubNet()
    with pytest.raises(EvalError, match="uint8"):
        evaluate_stream([torch.rand(4, 1, 8, 8)], net, progress=False)
    with pytest.raises(EvalError, match="empty"):
        evaluate_stream([], net, progress=False)
    with pytest.raises(EvalError, match="not comparable"):
        evaluate_stream([images(8)], net, reference_stats(images(8), StubNet(seed=1)), progress=False)
    with pytest.raises(EvalError, match="dimensions"):
        evaluate_stream([images(8)], net, (np.zeros(4), np.eye(4)), progress=False)


# ------------------------------------------------------------------------------------------------ references
def test_reference_cache_is_reused_and_refused_for_another_net(tmp_path):
    net, ims, cache = StubNet(), images(30), tmp_path / "ref.npz"
    ref = reference_stats(ims, net, cache=cache, source_name="toy")
    assert cache.is_file() and ref.num == 30 and ref.feats.shape == (30, 6)

    def must_not_load():
        raise AssertionError("the cache should have been used")
    again = reference_stats(must_not_load, net, cache=cache, source_name="toy")
    assert np.allclose(again.mu, ref.mu) and np.allclose(again.sigma, ref.sigma) and torch.equal(again.feats, ref.feats)
    assert again.feature_net == "stub0" and again.num == 30 and again.source == "toy"
    with pytest.raises(EvalError, match="stub0"):
        reference_stats(must_not_load, StubNet(seed=1), cache=cache)
    with pytest.raises(EvalError, match="holds statistics of 'toy'"):
        reference_stats(must_not_load, net, cache=cache, source_name="other data")


def test_adm_style_npz_reference_is_accepted(tmp_path):
    net, ims = StubNet(), images(50)
    feats = net.features(ims).double().numpy()
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    np.savez(tmp_path / "adm.npz", mu=mu, sigma=sigma)                    # only mu/sigma: FID, no PR
    ref = load_reference(tmp_path / "adm.npz", net)
    assert ref.feature_net is None and ref.feats is None and ref.num is None
    out = evaluate_stream([ims], net, ref, progress=False)
    assert out["fid"] == pytest.approx(0.0, abs=1e-6) and "precision" not in out and out["num_reference"] is None
    # with its reference images (arr_0, N x H x W x C as in ADM's VIRTUAL_*.npz): precision/recall too
    np.savez(tmp_path / "adm_imgs.npz", arr_0=ims.permute(0, 2, 3, 1).numpy(), mu=mu, sigma=sigma)
    ref = load_reference(tmp_path / "adm_imgs.npz", net, progress=False)
    assert ref.feats.shape == (50, 6)
    out = evaluate_stream([ims], net, ref, progress=False)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["pr_num_reference"] == 50
    np.savez(tmp_path / "samples.npz", arr_0=ims.numpy())
    with pytest.raises(EvalError, match="neither"):
        load_reference(tmp_path / "samples.npz", net)


# ------------------------------------------------------------------------------------------------ sources
def test_npz_sources_in_every_layout(tmp_path):
    ims = images(23, c=3)
    np.savez(tmp_path / "nhwc.npz", arr_0=ims.permute(0, 2, 3, 1).numpy())
    np.savez(tmp_path / "nchw.npz", ims.numpy())
    np.save(tmp_path / "gray.npy", ims[:, 0].numpy())
    for name, expect in (("nhwc.npz", ims), ("nchw.npz", ims), ("gray.npy", ims[:, :1])):
        src = iterate_npz(tmp_path / name, batch_size=10)
        batches = list(src)
        assert src.num_images == 23 and [len(b) for b in batches] == [10, 10, 3]
        assert torch.equal(torch.cat(batches), expect), name
    np.savez(tmp_path / "float.npz", arr_0=ims.float().numpy() / 255)
    with pytest.raises(EvalError, match="uint8"):
        iterate_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "two.npz", a=ims.numpy(), b=ims.numpy())
    with pytest.raises(EvalError, match="name the key"):
        iterate_npz(tmp_path / "two.npz")
    with pytest.raises(FileNotFoundError):
        iterate_npz(tmp_path / "missing.npz")


def test_image_folder_source_round_trips_pngs(tmp_path):
    from PIL import Image
    rgb, gray = images(5, seed=2, c=3, size=12), images(5, seed=3, size=12)
    (tmp_path / "rgb").mkdir()
    (tmp_path / "gray").mkdir()
    for i in range(5):
        Image.fromarray(rgb[i].permute(1, 2, 0).numpy()).save(tmp_path / f"rgb/{i}.png")
        Image.fromarray(gray[i, 0].numpy()).save(tmp_path / f"gray/{i}.png")
    src = iterate_image_folder(tmp_path / "rgb", batch_size=2)
    assert src.num_images == 5 and torch.equal(torch.cat(list(src)), rgb)
    assert torch.equal(torch.cat(list(iterate_image_folder(tmp_path / "gray", batch_size=4))), gray)
    assert torch.equal(torch.cat(list(iterate_image_folder(tmp_path / "gray", channels=3))), gray.repeat(1, 3, 1, 1))
    assert next(iter(iterate_image_folder(tmp_path / "rgb", resolution=10))).shape == (5, 3, 10, 10)
    with pytest.raises(EvalError, match="does not exist"):
        iterate_image_folder(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ Inception
def test_inception_without_weights_file_says_what_to_get(tmp_path):
    from rcg.evaluate import InceptionV3
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionV3(tmp_path / "missing.pth", device="cpu")


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """A randomly initialised state dict with torch-fidelity's Inception layout (torchvision's names),
    rescaled so activations stay O(1), saved as a weights file."""
    import torchvision
    torch.manual_seed(0)
    m = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in m.state_dict().items():
        if k.endswith("conv.weight"):
            fan_in = v[0].numel()
            v = torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif k.endswith("bn.weight"):
            v = 1 + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("bn.bias") or k.endswith("bn.running_mean"):
            v = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("bn.running_var"):
            v = 1 + 0.2 * torch.rand(v.shape, generator=g)
        elif k.startswith("fc."):
            v = torch.randn(v.shape, generator=g) * 0.05
        sd[k] = v
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(sd, path)
    return path


def test_inception_features_reproduce_torch_fidelity_on_random_weights(random_inception, tmp_path):
    """torch-fidelity reads the PNGs with its own folder pipeline and extractor; we read them with
    iterate_image_folder; features (pool3) and unbiased logits must agree, grayscale included."""
    from PIL import Image
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.utils import extract_featuresdict_from_input_id
    from rcg.evaluate import InceptionV3

    rgb = images(1, seed=5, c=3, size=24)[0]
    gray = images(1, seed=6, c=1, size=24)[0]
    Image.fromarray(rgb.permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    Image.fromarray(gray[0].numpy()).save(tmp_path / "b.png")            # a grayscale ("L") PNG

    tf = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=str(random_inception))
    ref = extract_featuresdict_from_input_id(1, tf, input1=str(tmp_path), cuda=False, batch_size=2,
                                             save_cpu_ram=True, verbose=False)
    with pytest.warns(UserWarning, match="not the standard"):
        net = InceptionV3(random_inception, device="cpu")
    assert net.name == "inception-v3-torch-fidelity" and len(net.weights_sha256) == 64
    ours_f, ours_l = net.features_and_logits(torch.cat(list(iterate_image_folder(tmp_path, channels=3))))
    assert ours_f.shape == (2, 2048) and ours_l.shape == (2, 1008)
    assert ref["2048"].abs().mean() > 1e-3 and torch.isfinite(ref["2048"]).all()
    assert torch.allclose(ours_f, ref["2048"], rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours_l, ref["logits_unbiased"], rtol=1e-5, atol=1e-5)
    # a 1-channel batch is repeated to RGB exactly as PIL's convert("RGB") does for torch-fidelity
    f1, l1 = net.features_and_logits(gray.unsqueeze(0))
    assert torch.allclose(f1[0], ref["2048"][1], rtol=1e-5, atol=1e-5)
    assert torch.allclose(l1[0], ref["logits_unbiased"][1], rtol=1e-5, atol=1e-5)


def test_inception_refuses_a_file_that_is_not_its_weights(tmp_path):
    from rcg.evaluate import InceptionV3
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(EvalError, match="fc.weight"):
        InceptionV3(tmp_path / "other.pth", device="cpu")


def test_rep_adherence_scores_a_faithful_generator_high_and_one_that_ignores_its_reps_at_chance():
    g = torch.Generator().manual_seed(0)
    n = 200
    labels = torch.randint(0, 10, (n,), generator=g)
    centers = torch.randn(10, 32, generator=g) * 2
    cond = centers[labels] + torch.randn(n, 32, generator=g)          # reps clustered by class
    faithful = rep_adherence(cond, cond * 3.0, labels, labels, labels)       # same directions, other scale
    assert faithful["rep_cosine"] == pytest.approx(1.0) and faithful["retrieval_top1"] == 1.0
    assert faithful["class_agreement"] == 1.0 and faithful["classifier_accuracy_sources"] == 1.0
    # cosine to other sources of the class, computed here pair by pair
    a = torch.nn.functional.normalize(cond.double(), dim=1)
    pairs = [float(a[i] @ a[j]) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]
    assert faithful["rep_cosine_same_class"] == pytest.approx(sum(pairs) / len(pairs))
    assert 0.2 < faithful["rep_cosine_same_class"] < 0.95
    assert faithful["class_agreement_shuffled"] < 0.5                 # a shifted pairing mostly crosses classes

    ignoring = rep_adherence(cond, torch.randn(n, 32, generator=g), torch.randint(0, 10, (n,), generator=g),
                             labels, labels)
    assert abs(ignoring["rep_cosine"]) < 0.1 and ignoring["retrieval_top1"] < 0.05
    assert ignoring["class_agreement"] < 0.25
    half = labels.clone()
    half[: n // 2] = (half[: n // 2] + 1) % 10                        # the classifier wrong on half the sources
    assert rep_adherence(cond, cond, labels, labels, half)["classifier_accuracy_sources"] == 0.5
    with pytest.raises(EvalError, match="N >= 2"):
        rep_adherence(cond[:1], cond[:1], labels[:1], labels[:1], labels[:1])
