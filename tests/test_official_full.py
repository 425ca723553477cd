"""Official checkpoints end to end: full-size architectures and their parameter counts, official-layout files ->
one generated image (paper presets and ``convert``), ``checkpoint_info`` / ``convert`` on every official fixture,
and unsafe pickles refused by every entry point.

Expected parameter counts are computed here from the layer shapes (RCG_FACTS sections 2-4), never by our code.
Full-size modules are built on the ``meta`` device (shapes only, no memory); official-layout files are tiny.
"""
import argparse
import json
import os
from dataclasses import replace

import pytest
import torch
from conftest import assert_close, fixture_dirs, read_io

from rcg.encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderConfig
from rcg.store import fingerprint
from rcg.official import (UnsafeCheckpointError, checkpoint_info, convert, format_info,
                          mage_from_official, mocov3_from_official, rdm_from_official, safe_load,
                          split_mage_checkpoint, vqgan_from_official)
from rcg.pixel.mage import MAGE, MAGEConfig
from rcg.rdm import RDM, RDMConfig
from rcg.tokenizer import VQConfig, VQModel


def _n(module):
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------
# (a) full-size architectures, counted from the layer shapes
# ------------------------------------------------------------------------------------------------
def lin(i, o, bias=True):
    return i * o + (o if bias else 0)


def ln(d):
    return 2 * d


def vit_block(d, ratio=4):
    h = d * ratio
    return ln(d) + lin(d, 3 * d) + lin(d, d) + ln(d) + lin(d, h) + lin(h, d)


def rdm_count(rep=256, temb=256, width=1536, blocks=12, ctx=0):
    """SimpleMLP: time MLP, input projection, blocks (LN, Linear, emb Linear, [ctx Linear], LN, Linear), out."""
    block = ln(width) + lin(width, width) + lin(temb, width) + (lin(ctx, width) if ctx else 0) + ln(width) \
        + lin(width, width)
    return lin(width, temb) + lin(temb, temb) + lin(rep, width) + blocks * block + ln(width) + lin(width, rep)


def vit_backbone_count(d, depth, img=224, patch=16):
    """patch conv, cls token, fixed pos table (a Parameter in timm), blocks, final norm."""
    tokens = 1 + (img // patch) ** 2
    return d * 3 * patch * patch + d + d + tokens * d + depth * vit_block(d) + ln(d)


def projector_count(d, mlp=4096, out=256):
    """MoCo v3 build_mlp(3): Linear(no bias) BN ReLU, Linear(no bias) BN ReLU, Linear(no bias) BN(affine=False)."""
    return lin(d, mlp, False) + 2 * mlp + lin(mlp, mlp, False) + 2 * mlp + lin(mlp, out, False)


def mage_counts(d, depth, dd=None, ddepth=8, vocab=2025, seq=257, rep=256, patch_pixels=16 * 16 * 3):
    """(parameters of the generation path, unused trainable official ones: cls_token, mask_token, patch_embed,
    decoder_pred). The fixed pos_embed / decoder_pos_embed tables are not trainable and not counted."""
    dd = dd or d
    used = (vocab * d + seq * d + ln(d)                     # token_emb: word + position embeddings, LayerNorm
            + lin(rep, d) + rep                             # latent_prior_proj, fake_latent
            + depth * vit_block(d) + ln(d)                  # encoder blocks, norm
            + lin(d, dd) + seq * dd                         # decoder_embed, decoder_pos_embed_learned
            + ddepth * vit_block(dd) + ln(dd)               # decoder blocks, decoder_norm
            + lin(dd, d) + ln(d) + vocab)                   # mlm_layer fc, ln, bias
    unused = d + dd + (patch_pixels * d + d) + lin(dd, patch_pixels)
    return used, unused


def resblock(cin, cout):
    return ln(cin) + cin * cout * 9 + ln(cout) + cout * cout * 9 + (cout * cout if cin != cout else 0)


def vqgan_counts(ch=128, mult=(1, 1, 2, 2, 4), nrb=2, z=256, n_embed=1024, cin=3):
    """(encoder, decoder, codebook) of MAGE's VQGAN (no attention, no quant_conv; 1x1 shortcut where channels
    change; encoder convs without bias except conv_out; decoder conv_in / upsample / conv_out with bias)."""
    widths = [ch * m for m in mult]
    top = widths[-1]
    enc = cin * ch * 9
    prev = ch
    for w in widths:
        for j in range(nrb):
            enc += resblock(prev if j == 0 else w, w)
        prev = w
    enc += 2 * resblock(top, top) + ln(top) + lin(top, z)
    dec = z * top * 9 + top + 2 * resblock(top, top)
    prev = top
    for i in reversed(range(len(widths))):
        for j in range(nrb):
            dec += resblock(prev if j == 0 else widths[i], widths[i])
        prev = widths[i]
        if i > 0:
            dec += widths[i] * widths[i] * 9 + widths[i]
    dec += ln(widths[0]) + widths[0] * 3 * 9 + 3
    return enc, dec, n_embed * z


def test_full_size_parameter_counts():
    from rcg.presets import ENCODER_PRESETS, PIXEL_PRESETS, RDM_RUN_PRESETS, TOKENIZER_PRESETS
    official_vocab = dict(vocab_size=2025, mask_token_id=2024, cond_token_id=1100)
    with torch.device("meta"):                        # shapes only: no memory, no initialisation cost
        # RDM 12 x 1536: 62,721,280 (RCG_FACTS 3, paper "63M"); class-conditional: + 12 context Linear(512 -> 1536)
        # and the 1000 x 512 class embedding = 72,176,896 + 512,000 (paper 512M = 439M + 72.7M)
        rdm = RDM(RDM_RUN_PRESETS["rdm-l12-w1536"].model)
        assert _n(rdm) == rdm_count() == 62_721_280
        del rdm
        rdm = RDM(RDM_RUN_PRESETS["rdm-l12-w1536-cls1000"].model)
        assert _n(rdm.net) == rdm_count(ctx=512) == 72_176_896
        assert _n(rdm) == rdm_count(ctx=512) + 1000 * 512 == 72_688_896
        del rdm
        # MoCo v3 ViT-B / ViT-L backbones (paper Table 7b: 86M / 304M) + the 3-layer 4096-wide projector
        for name, d, depth, paper in (("mocov3-vit-b", 768, 12, 86e6), ("mocov3-vit-l", 1024, 24, 304e6)):
            enc = Encoder(ENCODER_PRESETS[name].encoder)
            assert _n(enc.backbone) == vit_backbone_count(d, depth), name
            assert _n(enc.head) == projector_count(d), name
            assert abs(_n(enc.backbone) - paper) / paper < 0.005, (name, _n(enc.backbone))
            del enc
        assert vit_backbone_count(768, 12) + projector_count(768) == 106_786_560
        assert vit_backbone_count(1024, 24) + projector_count(1024) == 325_338_112
        # VQGAN f16 (config/mage/vqgan.yaml): 16x16 tokens at 256 px
        vq = VQModel(TOKENIZER_PRESETS["vqgan-f16-1024"].model)
        enc_n, dec_n, cb_n = vqgan_counts()
        assert (_n(vq.encoder), _n(vq.decoder), _n(vq.quantize)) == (enc_n, dec_n, cb_n)
        assert vq.token_grid == 16 and _n(vq) == 54_515_587
        del vq
        # MAGE-B / -L: RCG_FACTS 4 counts 146.28M / 409.63M incl. the unused official parameters, which our module
        # does not create. Paper "params at generation" 176M / 439M = generation path + VQGAN decoder + codebook.
        for name, d, depth, facts, paper in (("mage-b", 768, 12, 146.28e6, 176e6),
                                             ("mage-l", 1024, 24, 409.63e6, 439e6)):
            m = MAGE(replace(PIXEL_PRESETS[name].model, **official_vocab))
            used, unused = mage_counts(d, depth)
            assert _n(m) == used, name
            assert round((used + unused) / 1e4) == round(facts / 1e4), (name, used + unused)
            assert round((used + dec_n + cb_n) / 1e6) == paper / 1e6, (name, used + dec_n + cb_n)
            del m
    assert mage_counts(768, 12) == (145_094_377, 1_182_720)
    assert mage_counts(1024, 24) == (408_051_945, 1_576_704)


# ------------------------------------------------------------------------------------------------
# (b) a random-weight file in the official layout -> one generated image on CPU at batch 1
# ------------------------------------------------------------------------------------------------
CB, REP = 16, 8


def _perturb(module, scale=0.05):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


def _tiny_modules(num_classes=0, seed=0):
    """Our modules with tiny, complete dims: MoCo ViT (rep 8), VQGAN f2 (16 codes, 8 px -> 4x4 tokens),
    MAGE with the official vocabulary (codebook + 1000 + 1; head dim 64 -> 1 head), RDM 2 x 32."""
    torch.manual_seed(seed)
    enc = _perturb(Encoder(EncoderConfig(arch="vit", in_chans=3, rep_dim=REP, proj_layers=3, mlp_dim=16, img_size=32,
                                         patch_size=16, embed_dim=16, depth=1, num_heads=1, mean=IMAGENET_MEAN,
                                         std=IMAGENET_STD, input_size=32)))
    vq = _perturb(VQModel(VQConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=8, embed_dim=8,
                                   n_embed=CB, resolution=8)))
    mage = _perturb(MAGE(MAGEConfig(codebook_size=CB, num_tokens=16, vocab_size=CB + 1001, mask_token_id=CB + 1000,
                                    cond_token_id=CB + 76, embed_dim=64, depth=1, num_heads=1, decoder_embed_dim=64,
                                    decoder_depth=1, decoder_num_heads=1, rep_dim=REP)))
    with torch.no_grad():
        mage.token_emb.word_embeddings.weight.mul_(10.0)       # non-uniform logits
    rdm = _perturb(RDM(RDMConfig(in_channels=REP, time_embed_dim=16, model_channels=32, num_res_blocks=2,
                                 num_classes=num_classes, class_embed_dim=12)))
    return enc, vq, mage, rdm


def _vit_official(enc):
    """Our Encoder state dict under the official ViT names (``backbone.`` dropped; ``head.*`` as is)."""
    return {k[len("backbone."):] if k.startswith("backbone.") else k: v.clone() for k, v in enc.state_dict().items()}


def _adamw_state(p):
    moments = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    return {"state": {0: {"step": torch.tensor(3.0), **moments}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.05, "params": [0]}]}


def official_mage_file(mage, vq, enc, args=None):
    """util/misc.save_model layout of an RCG MAGE file: the full state_dict incl. unused parameters and the frozen
    ``vqgan.*`` / ``pretrained_encoder.*`` sub-models, ``model_ema`` None, optimizer, epoch, scaler, ``args``."""
    c = mage.cfg
    D, Dd, S = c.embed_dim, c.decoder_embed_dim, 1 + c.num_tokens
    sd = {("fake_latent" if k == "null_rep" else k): v.clone() for k, v in mage.state_dict().items()}
    sd.update({"cls_token": torch.randn(1, 1, D), "pos_embed": torch.randn(1, S, D),
               "mask_token": torch.randn(1, 1, Dd),
               "decoder_pos_embed": torch.randn(1, S, Dd), "token_emb.position_ids": torch.arange(S)[None],
               "patch_embed.proj.weight": torch.randn(D, 3, 16, 16), "patch_embed.proj.bias": torch.randn(D),
               "decoder_pred.weight": torch.randn(768, Dd), "decoder_pred.bias": torch.randn(768)})
    sd.update({"vqgan." + k: v.clone() for k, v in vq.state_dict().items()})
    sd.update({"pretrained_encoder." + k: v for k, v in _vit_official(enc).items()})
    ns = argparse.Namespace(model="mage_vit_tiny_patch16", use_rep=True, rep_dim=REP, rep_drop_prob=0.1,
                            pretrained_enc_arch="mocov3_vit_tiny", pretrained_enc_withproj=True, temp=6.0,
                            num_iter=20, cfg=1.0, mask_ratio_min=0.5, mask_ratio_max=1.0, mask_ratio_mu=0.75,
                            mask_ratio_std=0.25, rdm_steps=250, eta=1.0, epochs=200, blr=1.5e-4, **(args or {}))
    return {"model": sd, "model_ema": None, "optimizer": _adamw_state(sd["fake_latent"]), "epoch": 199,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 0}, "args": ns}


def official_rdm_file(rdm, enc, ema_offset=0.01):
    """util/misc.save_model layout of an RCG RDM file: schedule buffers, ``model.diffusion_model.*``, LitEma
    shadows ``model_ema.<name without dots>`` (+ decay, num_updates), the class embedding, the MoCo encoder."""
    betas = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64) ** 2
    sd = {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}
    for k, v in rdm.net.state_dict().items():
        sd["model.diffusion_model." + k] = v.clone()
        sd["model_ema." + ("diffusion_model." + k).replace(".", "")] = v.clone() + ema_offset * torch.randn_like(v)
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(54321, dtype=torch.int32)
    sd["cond_stage_model.embedding.weight"] = (rdm.class_embed.weight.detach().clone() if rdm.cfg.num_classes
                                               else torch.randn(1, rdm.cfg.class_embed_dim))
    sd.update({"pretrained_encoder." + k: v for k, v in _vit_official(enc).items()})
    ns = argparse.Namespace(config="config/rdm/mocov3vitb_simplemlp_l12_w1536.yaml", batch_size=128, epochs=200,
                            blr=1e-6, weight_decay=0.01)
    return {"model": sd, "model_ema": None, "optimizer": _adamw_state(sd["betas"]), "epoch": 199,
            "scaler": {"scale": 65536.0}, "args": ns}


def _write_system(folder, names, num_classes=0):
    folder.mkdir(parents=True, exist_ok=True)
    enc, vq, mage, rdm = _tiny_modules(num_classes)
    torch.save(official_mage_file(mage, vq, enc), folder / names[1])
    torch.save(official_rdm_file(rdm, enc), folder / names[0])
    return enc, vq, mage, rdm


@pytest.mark.parametrize("preset,names,ncls", [
    ("imagenet-rcg-mage-b", ("rdm-mocov3vitb.pth", "mage-b.pth"), 0),
    ("imagenet-rcg-mage-l-cls", ("rdm-mocov3vitl-clscond.pth", "mage-l.pth"), 5),
])
def test_official_layout_to_one_image(tmp_path, preset, names, ncls):
    from rcg.paper import PAPER_PRESETS, load_paper_system
    enc, vq, mage, rdm = _write_system(tmp_path / "final_ckpts", names, ncls)      # found under final_ckpts/
    s = load_paper_system(preset, tmp_path, device="cpu", check_sizes=False)
    p = PAPER_PRESETS[preset]
    assert (s.cfg.steps, s.cfg.temperature, s.cfg.guidance) == (20, p.temperature, p.guidance)
    assert (s.rdm_cfg.sample_steps, s.rdm_cfg.eta) == (250, 1.0) and s.rdm_cfg.class_cond == bool(ncls)
    # the weights arrived: MAGE logits, VQGAN decode, encoder reps, RDM (EMA differs from raw)
    ids = torch.randint(0, CB, (2, 16)).masked_fill(torch.rand(2, 16) < 0.5, CB + 1000)
    rep, x = torch.randn(2, REP), torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(s.model.logits(ids, rep), mage.logits(ids, rep))
        assert torch.equal(s.tokenizer.decode_ids(ids.clamp(max=CB - 1)), vq.decode_ids(ids.clamp(max=CB - 1)))
        assert torch.equal(s.encoder.encode(x), enc.encode(x))
        y = torch.arange(2) if ncls else None
        assert not torch.allclose(s.rdm(rep, torch.tensor([3, 700]), y), rdm(rep, torch.tensor([3, 700]), y))
    label = 3 if ncls else None
    img = next(s.stream(1, seed=7, batch_size=1, label=label))
    assert img.shape == (1, 3, 8, 8) and img.dtype == torch.uint8
    assert torch.equal(img, next(s.stream(1, seed=7, batch_size=1, label=label)))      # one seed, one image
    if ncls:
        with pytest.raises(ValueError, match="class"):
            next(s.stream(1, seed=7, batch_size=1))

    # the same files through rcg convert and our run-directory loaders give the same image
    from rcg.sample import RCGSampler
    convert(tmp_path / "final_ckpts" / names[1], tmp_path / "conv" / "pixel")
    convert(tmp_path / "final_ckpts" / names[0], tmp_path / "conv" / "rdm")
    s2 = RCGSampler(str(tmp_path / "conv" / "pixel"), str(tmp_path / "conv" / "rdm"), "cpu")
    assert (s2.cfg.steps, s2.cfg.temperature, s2.cfg.guidance) == (20, 6.0, 1.0)        # the file's args
    img2 = next(s2.stream(1, seed=7, batch_size=1, label=label, temperature=p.temperature, guidance=p.guidance))
    assert torch.equal(img2, img)


def test_paper_presets_and_file_lookup(tmp_path):
    from rcg.paper import PAPER_PRESETS, find_weights, load_paper_system
    assert set(PAPER_PRESETS) == {"imagenet-rcg-mage-b", "imagenet-rcg-mage-l", "imagenet-rcg-mage-b-cls",
                                  "imagenet-rcg-mage-l-cls"}
    for name, p in PAPER_PRESETS.items():
        assert (p.rdm_steps, p.eta, p.steps) == (250, 1.0, 20)
        assert (p.temperature, p.guidance) == ((11.0, 6.0) if "mage-l" in name else (6.0, 1.0))
        assert p.class_cond == name.endswith("-cls")
    assert PAPER_PRESETS["imagenet-rcg-mage-l"].rdm_files[0] == "rdm-mocov3vitl.pth"
    assert PAPER_PRESETS["imagenet-rcg-mage-l-cls"].rdm_files[0] == "rdm-mocov3vitl-clscond.pth"
    assert PAPER_PRESETS["imagenet-rcg-mage-l"].mage_files[0] == "mage-l.pth"
    with pytest.raises(FileNotFoundError, match=r"rdm-mocov3vitl\.pth.*final_ckpts"):
        find_weights("imagenet-rcg-mage-l", tmp_path)
    with pytest.raises(KeyError, match="imagenet-rcg-mage-l"):
        find_weights("imagenet-rcg-mage-xl", tmp_path)
    _write_system(tmp_path, ("rdm-mocov3vitb.pth", "mage-b.pth"))
    assert find_weights("imagenet-rcg-mage-b", tmp_path) == {"rdm": tmp_path / "rdm-mocov3vitb.pth",
                                                             "mage": tmp_path / "mage-b.pth"}
    with pytest.raises(ValueError, match="wrong file for this preset"):          # tiny MAGE is not MAGE-B
        load_paper_system("imagenet-rcg-mage-b", tmp_path, device="cpu")
    with pytest.raises(ValueError, match="unconditional RDM"):                  # explicit files, wrong RDM kind
        load_paper_system("imagenet-rcg-mage-b-cls", rdm=tmp_path / "rdm-mocov3vitb.pth",
                          mage=tmp_path / "mage-b.pth", device="cpu", check_sizes=False)


# ------------------------------------------------------------------------------------------------
# (c) checkpoint_info and convert on every official fixture
# ------------------------------------------------------------------------------------------------
SUFFIXES = (".pth.tar", ".pth", ".ckpt")


def _fixture_cases():
    dirs = fixture_dirs()                          # every folder of RCG_OFFICIAL_FIXTURES (default: both shared ones)
    if not dirs:
        return [pytest.param(None, id="disabled", marks=pytest.mark.skip(reason="RCG_OFFICIAL_FIXTURES is empty"))]
    files = sorted((f for d in dirs if d.is_dir() for f in d.iterdir() if f.name.endswith(SUFFIXES)),
                   key=lambda f: f.name)
    return [pytest.param(f, id=f.name) for f in files] or [pytest.param(None, id="missing")]


def _io(path):
    if path is None:
        pytest.fail(f"no official fixtures in {':'.join(map(str, fixture_dirs()))}: set RCG_OFFICIAL_FIXTURES to the "
                    f"folder(s) holding them, ':'-separated (or to an empty string to disable the parity tests)")
    stem = next(path.name[:-len(s)] for s in SUFFIXES if path.name.endswith(s))
    io_path = path.with_name(stem + "_io.safetensors")
    if not io_path.is_file():
        pytest.fail(f"{path.name} has no companion io file {io_path.name}")
    return read_io(io_path)


@pytest.mark.parametrize("path", _fixture_cases())
def test_info_and_convert_fixture(path, tmp_path):
    from rcg.loaders import load
    io, meta = _io(path)
    cfg = meta.get("config", {})
    kind = path.name.split("_")[0]
    heads = dict(num_heads=cfg.get("num_heads"), decoder_num_heads=cfg.get("decoder_num_heads")) \
        if kind == "mage" else (dict(num_heads=cfg.get("num_heads")) if kind == "dit" else {})
    if kind == "ldm":               # heads and latent size are only in the training yaml (kept in the metadata)
        yaml_path = tmp_path / "ldm.yaml"
        yaml_path.write_text(__import__("yaml").safe_dump(cfg["ldm_yaml"]))
        heads = dict(ldm_config=str(yaml_path))
    info = checkpoint_info(path, **heads)
    assert info["kind"] == kind and info["supported"]
    assert info["params"] > 0 and info["architecture"] and format_info(info)
    json.dumps(info, default=str)
    out = tmp_path / "conv"
    if kind == "dit":           # full parity in tests/test_official_dit.py; here: info + convert round trip
        from rcg.config import PixelRun
        from rcg.pixel.dit import DiT
        from rcg.store import WEIGHTS, load_tensors, read_config
        from rcg.tree import from_dict, to_dict
        assert info["ema"] is True and info["config"]["rep_dim"] == cfg.get("rep_dim", 256)
        res = convert(path, out, **heads)
        run = from_dict(PixelRun, read_config(out))
        model = DiT(run.model)
        model.load_state_dict(load_tensors(out / WEIGHTS)[0])
        model.eval()
        assert run.official_first3 and run.generator == "dit"
        assert res["kind"] == "dit" and info["params"] == _n(model) and run.model == model.cfg
        with torch.no_grad():
            assert_close("out_ema", model(io["x"], io["t"], io["rep"]), io["out_ema"], 1e-5)
        assert convert(path, out, **heads)["runs"] == res["runs"]
        rec = load("pixel", out)                                   # our pixel runs' loader reads the converted DiT
        loaded, run2 = rec.module, rec.config
        assert run2 == run and torch.equal(loaded.final_layer.linear.weight, model.final_layer.linear.weight)
        # ... and samples through the generator registry like our DiT runs (latents, for a latent DiT)
        from rcg.diffusion import GaussianDiffusion
        from rcg.pixel import generator
        from rcg.pixel.dit import dit_generate
        from rcg.rng import per_sample
        rep = io["rep"][:2]
        got = generator(run2.generator).sampler(loaded, run2)(rep, None, per_sample([3, 4]), steps=3)
        c = model.cfg
        assert got.shape == (2, c.in_channels, c.input_size, c.input_size) and torch.isfinite(got).all()
        diffusion = GaussianDiffusion(num_steps=run.diffusion.num_steps, beta_start=1e-4, beta_end=0.02,
                                      parameterization="eps", schedule="linear", learn_sigma=c.learn_sigma)
        want = dit_generate(model, diffusion, per_sample([3, 4]), rep=rep, steps=3, sampler="ddpm",
                            guidance=run.guidance, clip_denoised=not run.autoencoder, official_first3=True)
        assert torch.equal(got, want)
        # a directory converted by an older rcg (its own DiTRun schema) loads the same and converts again in place
        d = run.diffusion
        legacy = {"generator": "dit", "encoder": run.encoder, "autoencoder": run.autoencoder,
                  "latent_scale": run.latent_scale, "model": json.loads(json.dumps(to_dict(run.model))),
                  "num_steps": d.num_steps, "beta_start": d.beta_start, "beta_end": d.beta_end, "steps": run.steps,
                  "guidance": run.guidance, "official_first3": run.official_first3}
        assert from_dict(PixelRun, legacy) == run
        (out / "config.json").write_text(json.dumps(legacy))
        assert load("pixel", out).config == run and convert(path, out, **heads)["runs"] == res["runs"]
        if run.autoencoder:                                        # latent DiT: the VAE is not shipped, say so
            from rcg.sample import RCGSampler
            with pytest.raises(ValueError, match="SD VAE"):
                RCGSampler(str(out), None, "cpu")
        return
    res = convert(path, out, resolution=32 if kind == "vqgan" else None, **heads)
    assert res["kind"] == kind and (out / "config.json").is_file() and (out / "checkpoint.safetensors").is_file()
    with torch.no_grad():
        if kind == "rdm":
            direct, dinfo = rdm_from_official(path)
            rec = load("rdm", out)
            model, rcfg, fp = rec.module, rec.config, rec.fingerprints["encoder"]
            assert info["ema"] == dinfo["ema"] and info["class_conditional"] == (model.cfg.num_classes > 0)
            assert info["params"] == _n(model) and model.cfg == direct.cfg
            assert (rcfg.sample_steps, rcfg.eta, rcfg.diffusion.beta_start, rcfg.diffusion.beta_end) == \
                (250, 1.0, 0.0015, 0.0195)
            assert fp == fingerprint(mocov3_from_official(path)[0])
            assert fp == fingerprint(load("encoder", rcfg.encoder).module)   # the official file, read as an encoder
            y = io.get("labels") if model.cfg.num_classes else None
            assert torch.equal(model(io["x"], io["t"], y), direct(io["x"], io["t"], y))
            if "out_ema" in io:
                assert_close("out_ema", model(io["x"], io["t"], y), io["out_ema"], 1e-5)
        elif kind == "mocov3":
            enc = load("encoder", out).module
            direct, _ = mocov3_from_official(path)
            assert info["momentum_encoder"] and info["predictor"] and info["params"] == _n(enc)
            rep = enc.encode(io["images_uint8"])
            assert torch.equal(rep, direct.encode(io["images_uint8"]))
            assert_close("rep", rep, io["rep"], 2e-4)
        elif kind == "vqgan":
            vq = load("tokenizer", out).module
            direct, _ = vqgan_from_official(path, resolution=32)
            assert vq.cfg == direct.cfg and vq.token_grid == 16
            assert torch.equal(vq.encode(io["images"])[1], io["ids"])
            assert torch.equal(vq.decode_ids(io["ids_dec"]), direct.decode_ids(io["ids_dec"]))
            assert_close("decoded_from_ids_dec", vq.decode_ids(io["ids_dec"]), io["decoded_from_ids_dec"], 1e-4)
        elif kind in ("adm", "ldm"):              # full parity in tests/test_official_{adm,ldm}.py; here: the round trip
            from rcg.official import adm_from_official, ldm_from_official
            from rcg.sample import RCGSampler
            rec = load("pixel", out)
            model, pcfg = rec.module, rec.config
            direct, dinfo = adm_from_official(path) if kind == "adm" else ldm_from_official(path, preset=cfg["ldm_yaml"])
            assert pcfg.generator == kind and model.cfg == direct.cfg and info["ema"] == dinfo["ema"] is True
            x = io["x"] if kind == "adm" else io["x_t"]
            assert torch.equal(model(x, io["t"], io["rep"]), direct(x, io["t"], io["rep"]))
            assert_close("out_ema", model(x, io["t"], io["rep"]), io["out_ema"], 1e-5)
            if kind == "adm":
                assert load("pixel", path).config == pcfg            # --pixel FILE samples as the converted run
            if kind == "ldm":                                        # the MoCo v3 encoder inside the file
                assert rec.fingerprints["encoder"] == fingerprint(load("encoder", pcfg.encoder).module)
            img = RCGSampler(str(out), None, "cpu").images_from_reps(io["rep"][:1], [0], steps=2)
            assert img.dtype == torch.uint8 and img.shape[:2] == (1, 3)
        else:
            from rcg.sample import RCGSampler
            rec = load("pixel", out)
            model, pcfg = rec.module, rec.config
            fps = {f"{k}_fingerprint": rec.fingerprints[k] for k in ("encoder", "tokenizer")}
            direct, dinfo = mage_from_official(path, **heads)
            used = _n(model)
            assert info["params"] == used and info["official_trainable_params"] > used
            assert set(info["submodels"]) == {"vqgan", "pretrained_encoder"}
            full = model.full_logits(io["tokens_in"], io["rep"])
            assert torch.equal(full, direct.full_logits(io["tokens_in"], io["rep"]))
            sel = full[:, 1:, :model.cfg.codebook_size][:, io["sel_positions"]]
            assert_close("logits_sel_cond", sel, io["logits_sel_cond"], 2e-4)
            assert pcfg.steps == dinfo["args"]["num_iter"] and pcfg.temperature == dinfo["args"]["temp"]
            parts = split_mage_checkpoint(safe_load(path))
            tok, enc = load("tokenizer", pcfg.tokenizer).module, load("encoder", pcfg.encoder).module
            assert torch.equal(tok.quantize.embedding.weight, parts["vqgan"]["quantize.embedding.weight"])
            assert torch.equal(enc.head[0].weight, parts["pretrained_encoder"]["head.0.weight"])
            assert fps == {"encoder_fingerprint": fingerprint(enc), "tokenizer_fingerprint": fingerprint(tok)}
            s = RCGSampler(str(out), None, "cpu")                  # fingerprints check out
            img = s.images_from_reps(io["rep"][:1], [0], steps=2)
            assert img.shape == (1, 3, 256, 256) and img.dtype == torch.uint8
    again = convert(path, out, resolution=32 if kind == "vqgan" else None, **heads)     # rerun: same config
    assert again["runs"] == res["runs"]


def test_convert_refuses_a_different_run(tmp_path):
    enc, vq, mage, rdm = _tiny_modules()
    torch.save(official_rdm_file(rdm, enc), tmp_path / "a.pth")
    _, _, _, rdm2 = _tiny_modules(num_classes=3, seed=1)
    torch.save(official_rdm_file(rdm2, enc), tmp_path / "b.pth")
    convert(tmp_path / "a.pth", tmp_path / "out")
    from rcg.store import CheckpointError
    with pytest.raises(CheckpointError, match="different config"):
        convert(tmp_path / "b.pth", tmp_path / "out")
    info = checkpoint_info(tmp_path / "b.pth")
    assert info["class_conditional"] and info["ema"] and info["ema_num_updates"] == 54321
    assert info["params"] == rdm_count(REP, 16, 32, 2, ctx=12) + 3 * 12


# ------------------------------------------------------------------------------------------------
# (d) a pickle that would run code is refused everywhere, and never runs
# ------------------------------------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _entry_points(tmp_path):
    from rcg.loaders import load
    from rcg.paper import load_paper_system
    return {
        "checkpoint_info": checkpoint_info,
        "convert": lambda p: convert(p, tmp_path / "out"),
        "load_paper_system": lambda p: load_paper_system("imagenet-rcg-mage-b", rdm=p, mage=p, device="cpu"),
        **{f"load_{kind}": (lambda p, kind=kind: load(kind, p)) for kind in ("rdm", "encoder", "tokenizer", "pixel")},
    }


@pytest.mark.parametrize("entry", ["checkpoint_info", "convert", "load_paper_system", "load_rdm", "load_encoder",
                                   "load_tokenizer", "load_pixel"])
@pytest.mark.parametrize("where", ["args", "weights"])
def test_unsafe_pickle_is_refused(tmp_path, entry, where):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    sd = {"model.diffusion_model.input_proj.weight": torch.zeros(4, 2), "token_emb.word_embeddings.weight":
          torch.zeros(3, 2)}
    ckpt = {"model": sd, "epoch": 1, "args": argparse.Namespace(lr=1.0)}
    if where == "args":
        ckpt["args"] = _Exploit(marker)
    else:
        sd["quantize.embedding.weight"] = _Exploit(marker)
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpointError, match=r"system") as e:
        _entry_points(tmp_path)[entry](path)
    assert "nothing was executed" in str(e.value)
    assert not marker.exists(), "the pickled payload was executed"
    assert not (tmp_path / "out").exists()
