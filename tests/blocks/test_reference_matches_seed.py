"""The reference blocks are faithful to the seed's own classes (verbatim copies in tests/fixtures/seed_blocks.py):
a state_dict saved from a seed class loads with ``strict=True`` into the reference (and back), and both give the
same outputs. DCN has no seed class (the seed only sketches it in prose).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from fixtures import seed_blocks as seed
from torch import nn

from blocks_export import blocks
from blocks_export.blocks import randomize_

# (name, seed constructor, reference constructor, input shape): shapes where the seed runs.
CASES: list[tuple[str, Callable[[], nn.Module], Callable[[], nn.Module], tuple[int, ...]]] = [
    ("acmix", lambda: seed.ACmix(16, 16), lambda: blocks.ACmix(16, 16), (2, 16, 12, 10)),
    ("acmix_k3_h2_s2", lambda: seed.ACmix(8, 8, kernel_att=3, head=2, stride=2),
     lambda: blocks.ACmix(8, 8, kernel_att=3, head=2, stride=2), (1, 8, 8, 12)),
    ("acmix_in_ne_out", lambda: seed.ACmix(6, 12, head=3), lambda: blocks.ACmix(6, 12, head=3), (1, 6, 9, 11)),
    ("cb2d_att_both", lambda: seed.CB2d(16), lambda: blocks.CB2d(16), (2, 16, 7, 5)),
    ("cb2d_avg_add", lambda: seed.CB2d(8, "avg", ["channel_add"]), lambda: blocks.CB2d(8, "avg", ["channel_add"]),
     (3, 8, 4, 9)),
    ("cb2d_att_mul", lambda: seed.CB2d(12, "att", ["channel_mul"]), lambda: blocks.CB2d(12, "att", ["channel_mul"]),
     (1, 12, 11, 3)),
    ("ca", lambda: seed.CA(32, 32), lambda: blocks.CA(32, 32), (2, 32, 9, 14)),
    ("ca_r4", lambda: seed.CA(16, 16, reduction=4), lambda: blocks.CA(16, 16, reduction=4), (1, 16, 5, 5)),
    ("space_to_depth", lambda: seed.space_to_depth(), lambda: blocks.space_to_depth(), (2, 3, 8, 6)),
]


@pytest.mark.parametrize("name,make_seed,make_ref,shape", CASES, ids=[c[0] for c in CASES])
def test_reference_loads_seed_state_dict_strictly_and_gives_the_same_outputs(name, make_seed, make_ref, shape):
    torch.manual_seed(0)
    original = randomize_(make_seed(), seed=7).eval()
    ref = make_ref().eval()
    ref.load_state_dict(original.state_dict(), strict=True)
    make_seed().load_state_dict(ref.state_dict(), strict=True)  # and back: no extra keys either
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = original(x), ref(x)
    assert got.shape == expected.shape
    # Same operations in the same order: allow only float32 rounding noise.
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max(), name
    assert expected.abs().max() > 0


def test_reference_state_dict_keys_equal_the_seed_keys():
    for name, make_seed, make_ref, _ in CASES:
        assert list(make_ref().state_dict()) == list(make_seed().state_dict()), name
