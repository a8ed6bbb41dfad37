"""Image files of every mode real datasets hold are read as Pillow's ``convert`` (and Ultralytics' reader) read them,
by both decoders of the script (Pillow, and OpenCV where Pillow is missing); and a letterboxed YOLO with dynamic H/W
gets Ultralytics' minimal stride-aligned rectangle (``LetterBox(auto=True)``), a static one the full size."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

cv2 = pytest.importorskip("cv2")

MODES = ("L", "LA", "RGB", "RGBA", "P", "P+transparency", "1", "CMYK", "I;16", "RGB16")


def _picture(seed: int = 0, h: int = 13, w: int = 17) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _write(folder: Path, mode: str, seed: int = 0) -> Path:
    """A file of ``mode``: PNG, except CMYK (TIFF); "RGB16" is a 16-bit RGB PNG (written by OpenCV)."""
    pic = _picture(seed)
    path = folder / f"{mode.replace(';', '').replace('+', '_')}.{'tif' if mode == 'CMYK' else 'png'}"
    if mode == "RGB16":
        rng = np.random.default_rng(seed)
        cv2.imwrite(str(path), rng.integers(0, 65536, (13, 17, 3), dtype=np.uint16))
        return path
    if mode == "I;16":
        pic = Image.fromarray(np.random.default_rng(seed).integers(0, 65536, (13, 17), dtype=np.uint16))
    elif mode == "RGBA":
        pic = pic.convert("RGBA")
        pic.putalpha(Image.fromarray(np.random.default_rng(seed + 1).integers(0, 256, (13, 17), dtype=np.uint8)))
    elif mode == "P+transparency":
        pic = pic.convert("P", palette=Image.Palette.ADAPTIVE, colors=20)
        pic.info["transparency"] = 2
    elif mode != "RGB":
        pic = pic.convert(mode)
    pic.save(path)
    return path


def _pillow(path: Path, color: str) -> np.ndarray:
    """Pillow's own conversion; 16-bit values keep their high byte (Pillow's convert would clip them at 255)."""
    with Image.open(path) as img:
        if img.mode.startswith("I;16"):
            gray = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8))
            return np.asarray(gray.convert("L" if color == "GRAY" else "RGB"))
        return np.asarray(img.convert("L" if color == "GRAY" else "RGB"))


def _decoded(infer, path: Path, color: str) -> np.ndarray:
    pixels = infer.convert_color(infer.read_image(str(path)), color)
    return pixels[:, :, 0] if color == "GRAY" else pixels


@pytest.mark.parametrize("color", ["RGB", "GRAY"])
@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_is_read_as_pillow_converts_it(infer, tmp_path: Path, mode: str, color: str) -> None:
    path = _write(tmp_path, mode)
    np.testing.assert_array_equal(_decoded(infer, path, color), _pillow(path, color))


@pytest.mark.parametrize("color", ["RGB", "GRAY"])
@pytest.mark.parametrize("mode", [m for m in MODES if m != "CMYK"])  # OpenCV reads CMYK TIFFs its own way
def test_the_opencv_decoder_reads_every_mode_as_the_pillow_one(infer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               mode: str, color: str) -> None:
    path = _write(tmp_path, mode)
    with_pillow = _decoded(infer, path, color)
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL fails: the script falls back to OpenCV
    np.testing.assert_array_equal(_decoded(infer, path, color), with_pillow)


@pytest.mark.parametrize("mode", [m for m in MODES if m != "CMYK"])
def test_rgb_pixels_are_ultralytics_own(infer, tmp_path: Path, mode: str) -> None:
    """What Ultralytics' predict reads from the same file (its OpenCV reader, BGR): the same RGB pixels."""
    pytest.importorskip("ultralytics")
    from ultralytics.utils.patches import imread

    path = _write(tmp_path, mode)
    np.testing.assert_array_equal(_decoded(infer, path, "RGB"), imread(str(path))[:, :, ::-1])


def test_pillow_clips_16_bit_grey_which_is_why_the_high_byte_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[256, 40000, 65535]], dtype=np.uint16)).save(path)
    assert np.asarray(Image.open(path).convert("L")).tolist() == [[255, 255, 255]]  # saturated
    assert cv2.imread(str(path), cv2.IMREAD_COLOR)[0, :, 0].tolist() == [1, 156, 255]  # Ultralytics' reader


@pytest.mark.parametrize("image_hw", [(400, 640), (480, 360), (333, 517), (50, 1000), (320, 320), (77, 64)])
@pytest.mark.parametrize("size,stride", [((320, 320), 32), ((320, 256), 32), ((640, 640), 64)])
def test_stride_letterbox_is_ultralytics_auto_letterbox(infer, image_hw: tuple[int, int], size: tuple[int, int],
                                                        stride: int) -> None:
    """Canvas and placement equal Ultralytics' ``LetterBox(auto=True)``: pixels equal where the resize is exact (a
    constant image), the box inverse equals its ``scale_boxes`` from the canvas size."""
    pytest.importorskip("ultralytics")
    import torch
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.ops import scale_boxes

    img = np.full(image_hw + (3,), 7, dtype=np.uint8)
    theirs = LetterBox(size, auto=True, stride=stride)(image=img)
    ours = infer.letterbox(img, size, stride=stride)
    assert ours.shape == theirs.shape and infer.letterbox_canvas(image_hw, size, stride) == theirs.shape[:2]
    np.testing.assert_allclose(ours, theirs.astype(np.float32), atol=1e-5)  # float resize of a constant: 7 - 5e-7
    assert all(d % stride == 0 or d == s for d, s in zip(theirs.shape[:2], size, strict=True))
    prep = infer.Preprocess(size=size, resize="letterbox", stride=stride)
    rng = np.random.default_rng(sum(image_hw))
    xy = rng.random((20, 2)) * np.array(theirs.shape[1::-1]) * 0.8
    boxes = np.concatenate([xy, xy + rng.random((20, 2)) * 30 + 1], axis=1)
    want = scale_boxes(theirs.shape[:2], torch.from_numpy(boxes.copy()), image_hw).numpy()
    np.testing.assert_allclose(infer.to_image_pixels(boxes, image_hw, prep), want, atol=1e-6)
