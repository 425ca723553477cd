"""Shared test helper: where the official golden fixtures live."""
import os
from pathlib import Path
from typing import Optional

DEFAULT_FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "official"


def fixtures_dir() -> Optional[Path]:
    """``$RCG_OFFICIAL_FIXTURES`` if set (an empty value disables the official parity tests: returns None),
    else ``<repo>/../shared/fixtures/official``. The folder may be missing: callers must then fail."""
    env = os.environ.get("RCG_OFFICIAL_FIXTURES")
    if env is not None:
        return Path(env) if env.strip() else None
    return DEFAULT_FIXTURES
