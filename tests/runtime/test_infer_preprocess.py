"""Image preprocessing (stretch / letterbox, GRAY / RGB, scale / mean / std) against hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from infer_fixtures import classifier_model
from PIL import Image


def test_bilinear_upscale_uses_half_pixel_centres(infer):
    # 1 x 2 -> 1 x 4: source positions -0.25, 0.25, 0.75, 1.25 clamp to a, .75a + .25b, .25a + .75b, b.
    img = np.array([[[0.0], [100.0]]], dtype=np.float32)  # (1, 2, 1)
    out = infer.resize_bilinear(img, (1, 4))
    np.testing.assert_allclose(out[0, :, 0], [0.0, 25.0, 75.0, 100.0])


def test_bilinear_downscale_by_two_averages_pixel_pairs(infer):
    # 4 -> 2: positions 0.5 and 2.5, i.e. the mean of pixels (0, 1) and (2, 3).
    img = np.array([[10.0, 20.0, 40.0, 80.0]], dtype=np.float32)[:, :, None]  # (1, 4, 1)
    np.testing.assert_allclose(infer.resize_bilinear(img, (1, 2))[0, :, 0], [15.0, 60.0])


def test_same_size_is_not_resampled(infer):
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    np.testing.assert_array_equal(infer.resize_bilinear(img, (2, 2)), img.astype(np.float32))


def test_letterbox_keeps_aspect_and_pads_with_114(infer):
    img = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.uint8)[:, :, None]  # (2, 4, 1): ratio 1 into 4 x 4
    out = infer.letterbox(img, (4, 4))[:, :, 0]
    expected = np.array([[114] * 4, [1, 2, 3, 4], [5, 6, 7, 8], [114] * 4], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)


def test_letterbox_of_a_tall_image_pads_left_and_right(infer):
    img = np.full((4, 2, 1), 9, dtype=np.uint8)  # ratio min(2/4, 2/2) = 0.5 -> 2 x 1, one column of padding
    out = infer.letterbox(img, (2, 2))[:, :, 0]
    np.testing.assert_array_equal(out, [[9, 114], [9, 114]])


def test_gray_conversion_uses_bt601_luma_rounded(infer):
    img = np.array([[[10, 20, 30], [10, 20, 35], [255, 255, 255]]], dtype=np.uint8)
    gray = infer.convert_color(img, "GRAY")
    # 0.299 * 10 + 0.587 * 20 + 0.114 * 30 = 18.15 -> 18; with blue 35: 18.72 -> 19
    assert gray.shape == (1, 3, 1)
    assert gray[0, :, 0].tolist() == [18, 19, 255]
    assert infer.convert_color(np.array([[7]], dtype=np.uint8), "RGB").tolist() == [[[7, 7, 7]]]


def test_normalisation_applies_scale_then_mean_then_std_per_channel(infer):
    img = np.array([[[255, 0, 51]]], dtype=np.uint8)  # one RGB pixel
    prep = infer.Preprocess(size=(1, 1), scale=1 / 255, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 0.1))
    x = infer.preprocess_image(img, prep)
    assert x.shape == (3, 1, 1)
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.5) / 0.5, (0 - 0.25) / 0.25, (0.2 - 0.0) / 0.1], rtol=1e-6)


def test_metadata_defaults_when_preprocess_is_absent(infer):
    prep = infer.make_preprocess(infer.ModelMeta(), [1, 1, 28, 28], None)
    assert prep == infer.Preprocess(size=(28, 28), resize="stretch", color="GRAY", scale=1 / 255, mean=(0.0,),
                                    std=(1.0,))
    with pytest.raises(infer.BadInput, match="dynamic H/W"):
        infer.make_preprocess(infer.ModelMeta(), ["n", 3, "h", "w"], None)


def test_png_through_the_cli_letterboxed_matches_a_hand_computed_tensor(cli, tmp_path, infer):
    # 2 x 4 RGB image into a 4 x 4 model: rows 0 and 3 are padding (114), rows 1-2 the image.
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[..., 2] = 50
    Image.fromarray(pixels, mode="RGB").save(tmp_path / "wide.png")
    meta = {"blocks_export.preprocess": json.dumps({"size": [4, 4], "resize": "letterbox", "color": "RGB",
                                                    "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]})}
    model = tmp_path / "m.onnx"
    import onnx

    onnx.save(classifier_model(metadata=meta), str(model))
    code, out, err = cli(model, tmp_path / "wide.png", "--json", "--save-outputs", tmp_path / "out")
    assert code == 0, err
    logits = np.load(tmp_path / "out" / "logits.npy")
    # channel means over the 4 x 4 letterboxed image: (8 * 114 + 8 * value) / 16 / 255
    r, g, b = ((114 + 200) / 2 / 255, (114 + 0) / 2 / 255, (114 + 50) / 2 / 255)
    np.testing.assert_allclose(logits[0], [r, g, b, r + b, -r], rtol=1e-5)
    assert json.loads(out)["preprocess"]["resize"] == "letterbox"


def test_malformed_preprocess_metadata_is_bad_input(infer):
    for spec in ({"size": ["a", 4]}, {"scale": "x"}, {"mean": [1, 2]}, {"std": [0, 1, 1]}, {"size": [0, 4]}):
        meta = infer.ModelMeta(preprocess=spec)
        with pytest.raises(infer.BadInput, match="preprocess"):
            infer.make_preprocess(meta, [1, 3, 4, 4], None)


def test_a_static_input_resizes_to_its_own_size_and_a_dynamic_one_to_the_metadata_size(infer):
    meta = infer.ModelMeta(preprocess={"size": [32, 32]}, export_shape={"x": [1, 3, 40, 40]})
    assert infer.make_preprocess(meta, [1, 3, 48, 24], None).size == (48, 24)
    assert infer.make_preprocess(meta, [1, 48, 24, 3], None).size == (48, 24)  # channels last
    assert infer.make_preprocess(meta, ["n", 3, "h", "w"], None).size == (32, 32)
