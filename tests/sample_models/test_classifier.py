"""The trained digits classifier: its blocks, its stored accuracy, its record and its demo images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from blocks_export.blocks import CA, DCN, ACmix, CB2d, space_to_depth


@pytest.fixture(scope="module")
def model(samples: Path) -> torch.nn.Module:
    return torch.load(samples / "classifier.pt", weights_only=False).eval()


def test_classifier_contains_each_of_the_five_blocks(model: torch.nn.Module) -> None:
    found = {cls.__name__ for cls in (ACmix, CB2d, CA, space_to_depth, DCN)
             if any(type(m) is cls for m in model.modules())}
    assert found == {"ACmix", "CB2d", "CA", "space_to_depth", "DCN"}
    assert all(m.modulated for m in model.modules() if isinstance(m, DCN)), "DCN v2 has a modulation mask"


def test_trained_blocks_left_their_initial_values(model: torch.nn.Module) -> None:
    # Zero-initialised offsets and GCNet last layers would make DCN a plain conv and CB2d an identity.
    dcn = next(m for m in model.modules() if isinstance(m, DCN))
    assert dcn.offset.weight.abs().max() > 1e-3
    cb = next(m for m in model.modules() if isinstance(m, CB2d))
    assert cb.channel_add_conv[-1].weight.abs().max() > 1e-3
    assert cb.channel_mul_conv[-1].weight.abs().max() > 1e-3
    acmix = next(m for m in model.modules() if isinstance(m, ACmix))
    assert float(acmix.rate1.detach()) != 0.5 and float(acmix.rate2.detach()) != 0.5


def test_stored_accuracy_is_reproduced_on_the_held_out_split(model: torch.nn.Module, classifier_record: dict,
                                                            digits_test_split: tuple) -> None:
    x, labels = digits_test_split
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    acc = float((pred == labels).mean())
    assert len(labels) == classifier_record["n_test"] == 360
    assert acc == pytest.approx(classifier_record["test_accuracy"], abs=1e-6)
    assert model.export_metadata["test_accuracy"] == classifier_record["test_accuracy"]
    assert acc >= 0.97


def test_held_out_split_is_disjoint_stratified_and_a_fifth(classifier_record: dict) -> None:
    target = load_digits().target
    idx = np.asarray(classifier_record["test_indices"])
    assert len(set(idx.tolist())) == len(idx)
    assert classifier_record["n_train"] + classifier_record["n_test"] == len(target) == 1797
    counts = np.bincount(target[idx], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # 20 % of each class's 174..183 images


def test_export_metadata_matches_the_record(model: torch.nn.Module, classifier_record: dict) -> None:
    meta = model.export_metadata
    assert meta["task"] == "classify"
    assert meta["labels"] == classifier_record["labels"] == [str(i) for i in range(10)]
    assert meta["preprocess"] == classifier_record["preprocess"]
    assert set(meta["preprocess"]) >= {"size", "resize", "color", "scale", "mean", "std"}


def test_preprocessing_constants_are_the_training_split_statistics(classifier_record: dict) -> None:
    digits = load_digits()
    train = np.ones(len(digits.target), dtype=bool)
    train[classifier_record["test_indices"]] = False
    p = classifier_record["preprocess"]
    u8 = np.clip(np.rint(digits.images[train] * 255.0 / 16.0), 0, 255).astype(np.uint8)
    up = np.stack([np.asarray(Image.fromarray(im, mode="L").resize(tuple(p["size"][::-1]), Image.BILINEAR))
                   for im in u8]).astype(np.float64) * p["scale"]
    assert up.mean() == pytest.approx(p["mean"][0], abs=1e-3)
    assert up.std() == pytest.approx(p["std"][0], abs=1e-3)


def test_demo_images_are_held_out_digits_the_model_recognises(samples: Path, model: torch.nn.Module,
                                                              classifier_record: dict,
                                                              digits_test_split: tuple) -> None:
    pngs = sorted((samples / "images").glob("digit_*.png"))
    assert len(pngs) == 10
    x_test, _ = digits_test_split
    test_pos = {int(i): k for k, i in enumerate(classifier_record["test_indices"])}
    target = load_digits().target
    p = classifier_record["preprocess"]
    for png in pngs:
        _, label, index = png.stem.split("_")
        assert int(index) in test_pos, f"{png.name} is not from the held-out split"
        assert target[int(index)] == int(label)
        img = Image.open(png)
        assert img.mode == "L" and img.size == tuple(p["size"][::-1])
        x = (np.asarray(img, dtype=np.float32) * p["scale"] - p["mean"][0]) / p["std"][0]
        # The PNG holds exactly the image the accuracy is measured on.
        np.testing.assert_allclose(x, x_test[test_pos[int(index)], 0].numpy(), atol=1e-6)
        with torch.no_grad():
            assert int(model(torch.from_numpy(x)[None, None]).argmax()) == int(label), png.name
