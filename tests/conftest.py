"""Shared test helper: where the official golden fixtures live."""
import os
from pathlib import Path
from typing import Optional

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
DEFAULT_FIXTURES = SHARED / "official"
DEFAULT_FOLDERS = (SHARED / "official", SHARED / "official-next")    # the ADM and LDM kinds are in the second


def fixture_dirs() -> list:
    """The folders of official fixtures: ``$RCG_OFFICIAL_FIXTURES`` (one folder, or several separated by ``:``; an
    empty value disables the official parity tests: []), else both shared folders."""
    env = os.environ.get("RCG_OFFICIAL_FIXTURES")
    if env is not None:
        return [Path(p) for p in env.split(":") if p.strip()]
    return list(DEFAULT_FOLDERS)


def fixtures_dir() -> Optional[Path]:
    """The first fixture folder (the five kinds of ``official/``), or None when the tests are disabled. The folder
    may be missing: callers must then fail."""
    dirs = fixture_dirs()
    return dirs[0] if dirs else None


def fixture_cases(pattern: str) -> list:
    """pytest params, one per official checkpoint matching ``pattern`` in any fixture folder; a missing folder
    or no match gives one param that :func:`companion_io` turns into a clear failure (never a silent skip)."""
    import pytest
    dirs = fixture_dirs()
    if not dirs:
        return [pytest.param(None, id="disabled", marks=pytest.mark.skip(reason="RCG_OFFICIAL_FIXTURES is empty"))]
    files = sorted({f for d in dirs if d.is_dir() for f in d.glob(pattern)}, key=lambda f: f.name)
    return [pytest.param(f, id=f.name) for f in files] or [pytest.param(None, id="missing")]


def companion_io(path, pattern: str) -> Path:
    """The ``*_io.safetensors`` beside an official checkpoint (the suffix of ``pattern`` is replaced)."""
    import pytest
    if path is None:
        pytest.fail(f"no official fixtures {pattern} in {':'.join(map(str, fixture_dirs()))}: set "
                    f"RCG_OFFICIAL_FIXTURES to the folder(s) holding them, separated by ':' (or to an empty string to "
                    f"disable the official parity tests)")
    suffix = pattern[pattern.index("*") + 1:]
    io = path.with_name(path.name[:-len(suffix)] + "_io.safetensors")
    if not io.is_file():
        pytest.fail(f"{path.name} has no companion io file {io.name}")
    return io


def read_io(io_path):
    """(tensors, fixture metadata) of an official ``*_io.safetensors``: every tensor, and the JSON of its
    ``fixture`` metadata entry ({} when absent)."""
    import json

    from safetensors import safe_open
    with safe_open(str(io_path), "pt") as f:
        io = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads((f.metadata() or {}).get("fixture", "{}"))
    return io, meta


def assert_close(name: str, got, want, atol: float) -> None:
    """Same shape and max |got - want| <= atol (in float64); prints the error so parity margins show with -s."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    print(f"{name}: max|diff| = {err:.3g}")
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol}"


@pytest.fixture(autouse=True, scope="session")
def _fp32_where_auto():
    """Every test sees a CPU without native bf16, so configs whose precision is auto (None) compute in fp32 on
    either kind of CI machine (session scope: module fixtures that train come first); tests of the choice
    itself stub the capability their own way."""
    from rcg import precision
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(precision, "cpu_has_native_bf16", lambda: False)
        yield
