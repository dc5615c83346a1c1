"""Shared test fixtures: the repo root on sys.path and the golden reference folder."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = (ROOT / "../shared/reference").resolve()  # golden vectors of the original
sys.path.insert(0, str(ROOT))


def reference_file(name: str) -> Path:
    """Path of a golden file, skipping the test when the reference folder is absent (user clones)."""
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"golden reference {path} not available (only present in CI / dev checkouts)")
    return path
