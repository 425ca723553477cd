"""``rcg eval``: FID / IS / precision-recall (and the representation FD) of generated images."""
from __future__ import annotations

import json
from pathlib import Path

from .. import dist
from .. import evaluate as E
from ..evaluate import InceptionV3
from ..data import load_dataset
from ..store import fingerprint

from ..loaders import load, load_reps
from .sample import load_sampler


def run_eval(*, npz=None, folder=None, pixel=None, rdm=None, preset=None, weights=None, mage=None,
             num: int = 10000, seed: int = 0, guidance=None, temperature=None, steps=None, sampler=None,
             rdm_solver=None, rdm_steps=None, inception_weights=None, evalnet=None, ref=None, ref_data=None,
             ref_cache=None, rep_reference=None, batch_size: int = 250, out_json=None, device=None,
             progress: bool = True, compile=False) -> dict:
    """``rcg eval``: metrics of generated images (an npz, a folder, or ``num`` samples streamed from a
    pixel run + RDM, no PNG round trip) against a reference (an npz of statistics, or ``ref_data``, a
    DataConfig whose statistics are computed once and cached in ``ref_cache``). Under torchrun the ``num``
    samples are split across the processes and gathered on rank 0, which alone computes the metrics and
    returns them (the other ranks return ``{}``)."""
    if sum(x is not None for x in (npz, folder, pixel or preset)) != 1:
        raise ValueError("give exactly one of --npz, --folder, --pixel (or --preset for the official weights)")
    if (inception_weights is None) == (evalnet is None):
        raise ValueError("give exactly one feature network: --inception-weights FILE or --evalnet RUN_DIR")
    if ref is None and ref_data is None:
        raise ValueError("give a reference: --ref FILE.npz, or --ref-data (with --ref-cache to keep its statistics)")
    dev = dist.setup(device)
    if not dist.is_main():
        if npz is None and folder is None:      # help generate; rank 0 gathers and scores
            s = load_sampler(pixel, rdm, dev, preset, weights, mage, sampler, rdm_solver, rdm_steps, compile)
            for _ in s.stream(num, seed=seed, batch_size=batch_size, steps=steps, temperature=temperature,
                              guidance=guidance):
                pass
        return {}
    net = InceptionV3(inception_weights, device=dev) if inception_weights is not None else load("evalnet", evalnet, dev).module
    reference = E.load_reference(ref, net) if ref is not None else E.reference_stats(
        lambda: E.iterate_tensor(load_dataset(ref_data).images, batch_size), net, cache=ref_cache,
        source_name=f"{ref_data}", progress=progress)
    rep_encoder = rep_ref = None
    if npz is not None:
        batches = E.iterate_npz(npz, batch_size)
    elif folder is not None:
        batches = E.iterate_image_folder(folder, batch_size)
    else:
        s = load_sampler(pixel, rdm, dev, preset, weights, mage, sampler, rdm_solver, rdm_steps, compile)
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
