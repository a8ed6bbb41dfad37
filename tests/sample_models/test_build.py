"""What makes ``sample_models/build.py`` reproduce the checked-in files: the split, the data, the detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sample_models import build


def test_build_draws_the_recorded_held_out_split(classifier_record: dict) -> None:
    # A change in scikit-learn's split would silently train the rebuilt classifier on other images.
    split = build.load_split()
    assert split.test_indices.tolist() == classifier_record["test_indices"]
    assert len(split.train_labels) == classifier_record["n_train"]


def test_build_preprocessing_matches_the_recorded_one(digits_test_split: tuple) -> None:
    split = build.load_split()
    x, labels = digits_test_split
    torch.testing.assert_close(build.normalise(split.test_images), x, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(split.test_labels, labels)


def test_rebuilt_detector_equals_the_checked_in_one(samples: Path) -> None:
    rebuilt = build.build_detector().state_dict()
    stored = torch.load(samples / "detector_state_dict.pt", weights_only=True)
    assert rebuilt.keys() == stored.keys()
    for key, value in stored.items():
        # Exact on the machine that built it; other CPUs may round the BatchNorm calibration differently.
        torch.testing.assert_close(rebuilt[key], value, rtol=1e-4, atol=1e-5, msg=key)
