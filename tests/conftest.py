import os
import sys
from pathlib import Path

import pytest

# Two cores on CI: one intra-op thread per test worker keeps pytest-xdist workers from fighting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # `import helpers`, `from fixtures import seed_blocks`


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
