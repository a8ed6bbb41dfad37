"""INT8 calibration images: a folder (and its label-named subfolders) read, shuffled with a seed and split into
the images that calibrate and the held-out images that verify, each read and preprocessed by
``runtime/infer.py``'s own functions (``read_image``, ``make_preprocess``, ``preprocess_image``) from the
metadata the exported graph carries, so the graph is calibrated on exactly what the runtime will feed it.

Bad input (no folder, no images, too few, unreadable or wrong-channel images) is one line, exit 2.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, UsageError, one_line

DEFAULT_CALIB_COUNT = 128
MAX_HELD_OUT = 64  # held-out images verified (each one is a run of the original model and of each candidate)
SEED = 0


@dataclass
class CalibrationSet:
    """Calibration and held-out tensors [N, C, H, W] float32, from the images of one folder."""

    folder: str
    calibration: list[str]
    held_out: list[str]
    calib_tensors: np.ndarray
    held_out_tensors: np.ndarray
    labels: list[int | None] = field(default_factory=list)  # held-out labels, from label-named subfolders
    preprocess: dict[str, Any] = field(default_factory=dict)  # the runtime's settings the images were read with
    names: list[str] = field(default_factory=list)  # the model's class names the labels index
    prep: Any = None  # the runtime's ``Preprocess`` the images were read with


def image_files(folder: Path, what: str = "calibration", option: str = "calib") -> list[tuple[str, str | None]]:
    """(path, label-folder name or None) of the images in ``folder`` and its direct subfolders, sorted. Only
    names with an image extension are looked at, and only regular files (a link to one counts) are kept: a FIFO
    or device named ``.png`` is skipped, never opened; an entry that cannot be looked at (a link loop, a
    permission) is one line that names it (``what`` the images are for, the ``option`` that named the folder)."""
    from blocks_export.runtime.infer import IMAGE_EXTENSIONS

    def scan(where: str) -> list[os.DirEntry[str]]:
        try:
            return sorted(os.scandir(where), key=lambda e: e.name)
        except OSError as e:
            raise InputError(f"{what} folder {where} cannot be read ({one_line(e)}); check `{option}`") from None

    def is_image(entry: os.DirEntry[str]) -> bool:
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            return False
        try:
            return entry.is_file()
        except OSError as e:  # ELOOP, EACCES: is_file() raises all but FileNotFoundError
            raise InputError(f"{what} image {entry.path} cannot be looked at ({e.strerror}); remove it or "
                             "fix the link") from None

    found: list[tuple[str, str | None]] = []
    for entry in scan(str(folder)):
        if entry.is_dir(follow_symlinks=False):
            found += [(s.path, entry.name) for s in scan(entry.path) if is_image(s)]
        elif is_image(entry):
            found.append((entry.path, None))
    return found


def image_preprocess(metadata: dict[str, str], input_shape: Sequence[int]) -> Any:
    """The runtime's ``Preprocess`` for a graph with ``metadata`` (``blocks_export.*`` strings) and input shape."""
    from blocks_export.runtime.infer import BadInput, make_preprocess, parse_meta

    try:
        return make_preprocess(parse_meta(metadata), list(input_shape), None)
    except BadInput as e:
        raise InputError(f"calibration images cannot be preprocessed: {e}") from None


def read_calibration(folder: Path, prep: Any, channels: int, calib_count: int | None,
                     label_names: Sequence[str] | None = None) -> CalibrationSet:
    """Split ``folder``'s images (seeded shuffle) into calibration and held-out sets and preprocess them with the
    runtime's code (each image converted to the model's colour as Pillow's ``convert`` does). Bad input (no folder,
    no images, too few, unreadable images) is one line."""
    from blocks_export.runtime.infer import BadInput, preprocess_image, read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"calibration folder {folder} does not exist or is not a folder; check `calib`")
    files = image_files(folder)
    if not files:
        raise InputError(f"calibration folder {folder} holds no images (.png, .jpg, ...); give a folder of images "
                         "like the ones the model will see in `calib`")
    if channels not in (1, 3):
        raise InputError(f"the model input has {channels} channels; calibration from images needs 1 (grayscale) "
                         "or 3 (RGB)")
    n = len(files)
    if calib_count is not None:
        if calib_count < 1:
            raise UsageError(f"`calib_count={calib_count}`: must be a positive number of images")
        if calib_count >= n:
            raise InputError(f"calibration folder {folder} holds {n} image(s); `calib_count={calib_count}` needs "
                             f"{calib_count} plus at least one held out for verification; add images or lower it")
        count = calib_count
    else:
        if n < 2:
            raise InputError(f"calibration folder {folder} holds 1 image; calibration and held-out verification "
                             "need at least 2")
        count = min(DEFAULT_CALIB_COUNT, n - max(1, n // 5))
    order = np.random.default_rng(SEED).permutation(n)
    chosen = [files[i] for i in order]
    calib, held = chosen[:count], chosen[count:count + MAX_HELD_OUT]

    def load(items: list[tuple[str, str | None]]) -> np.ndarray:
        tensors = []
        for path, _ in items:
            try:
                img = read_image(path)  # grayscale, RGBA, palette, 16-bit: as Pillow's convert does (runtime's code)
            except BadInput as e:
                raise InputError(f"calibration image: {e}") from None
            tensors.append(preprocess_image(img, prep))  # to the model's colour (prep.color), as the runtime does
        return np.stack(tensors).astype(np.float32)  # (N, C, H, W)

    labels: list[int | None] = []
    names = list(label_names or [])
    for _, sub in held:
        labels.append(names.index(sub) if sub is not None and sub in names else None)
    return CalibrationSet(str(folder), [p for p, _ in calib], [p for p, _ in held], load(calib), load(held), labels,
                          dataclasses.asdict(prep) if dataclasses.is_dataclass(prep) and not isinstance(prep, type) else {},
                          names, prep)
