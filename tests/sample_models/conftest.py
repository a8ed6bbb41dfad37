"""Fixtures for the sample models: the checked-in files, their folder, and the digits test split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `sample_models.models`, the --arch module, lives at the repository root


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def classifier_record() -> dict:
    return json.loads((SAMPLES / "classifier.json").read_text())


@pytest.fixture(scope="session")
def digits_test_split(classifier_record: dict) -> tuple[torch.Tensor, np.ndarray]:
    """Held-out digits [N, 1, 32, 32] preprocessed as classifier.json says, and their labels [N].

    Written here from the recorded preprocessing, independently of build.py, so that a change in the build's
    pipeline that the record does not reflect shows up as an accuracy mismatch.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    idx = np.asarray(classifier_record["test_indices"])
    p = classifier_record["preprocess"]
    h, w = p["size"]
    u8 = np.clip(np.rint(digits.images[idx] * 255.0 / 16.0), 0, 255).astype(np.uint8)
    up = np.stack([np.asarray(Image.fromarray(im, mode="L").resize((w, h), Image.BILINEAR)) for im in u8])
    x = (up.astype(np.float32) * p["scale"] - p["mean"][0]) / p["std"][0]
    return torch.from_numpy(x[:, None]), digits.target[idx]  # (N, 1, H, W)
