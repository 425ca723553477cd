"""The sampling calls of the golden fixture (tests/test_golden.py), run with the current working directory at
this folder. Only public entry points: the sampler and its methods."""
import torch


def sample_all() -> dict:
    from rcg.sample import RCGSampler
    torch.set_num_threads(1)
    out = {}
    mage = RCGSampler("mage", "rdm", "cpu")
    out["mage_uncond"] = torch.cat(list(mage.stream(6, seed=3, batch_size=4)))
    out["mage_unguided"] = torch.cat(list(mage.stream(3, seed=0, batch_size=3, guidance=0.0, temperature=2.0)))
    refs = out["mage_uncond"][:2]
    out["mage_from_ref"] = mage.images_from_reps(mage.reps_from_images(refs[:1]).expand(3, -1), [10, 11, 12])
    out["mage_interp"] = mage.interpolate(refs[0], refs[1], num=4, seed=5)
    dit = RCGSampler("dit", "rdm", "cpu")
    out["dit_uncond"] = torch.cat(list(dit.stream(4, seed=1, batch_size=3)))
    out["dit_unguided"] = dit.images_from_reps(dit.reps_from_rdm([20, 21]), [20, 21], guidance=0.0, steps=4)
    return out
