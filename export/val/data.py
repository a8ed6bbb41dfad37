"""Validation data: a classification folder or a YOLO-format detection set, read and checked before anything runs.

Classification: a folder of label-named subfolders of images (torchvision's ``ImageFolder`` layout; Ultralytics'
classify datasets are that layout under ``train/``, ``val/``, ``test/``, and such a root is read from ``val/``, else
``test/``). Folder names are matched to the model's class names (its metadata); a model without names takes the
sorted folder names, as ``ImageFolder`` numbers them.

Detection: an Ultralytics dataset yaml (``path``, ``val``, ``names``; ultralytics/data/utils.py
``check_det_dataset``) or a folder with ``images/`` and ``labels/`` (each with a ``val/`` split or the files
directly). A label file is the image's path with the last ``/images/`` replaced by ``/labels/`` and the suffix by
``.txt`` (Ultralytics' ``img2label_paths``): one object per line, ``class cx cy w h``, normalised to 0..1. An image
without a label file is background.

Bad data (missing, empty, the wrong layout, labels out of range, class names that do not match the model's) is
``InputError``: one line, exit 2. Images are decoded later, while the models run; an unreadable one stops the run
the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, one_line

SPLITS = ("val", "test")  # the split read from a dataset root, first found
_COORD_SLACK = 1e-6  # normalised coordinates may exceed [0, 1] by rounding only


@dataclass
class ClassifyData:
    """Images with class indices into ``names``."""

    source: str
    names: list[str]
    images: list[str]
    labels: list[int]
    task: str = "classify"


@dataclass
class DetectData:
    """Images with their objects: ``boxes[i]`` is [K, 5] (class, cx, cy, w, h normalised to the image)."""

    source: str
    names: list[str]
    images: list[str]
    boxes: list[np.ndarray] = field(default_factory=list)
    task: str = "detect"

    @property
    def objects(self) -> int:
        return int(sum(len(b) for b in self.boxes))


ValData = ClassifyData | DetectData


def _extensions() -> tuple[str, ...]:
    from blocks_export.runtime.infer import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def _is_image(name: str) -> bool:
    return name.lower().endswith(_extensions())


def _list(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"data folder {folder} cannot be read ({one_line(e)}); check `data`") from None


def _images_in(folder: Path) -> list[str]:
    return [e.path for e in _list(folder) if e.is_file() and _is_image(e.name)]


def read_data(path: Path, model_names: list[str] | None, task: str | None = None) -> ValData:
    """The validation set at ``path`` (module docstring), checked against the model's class names and task."""
    path = Path(path)
    check_data_path(path)
    kind = "detect" if path.is_file() or (path / "images").is_dir() else "classify"
    if task in ("classify", "detect") and kind != task:
        what = {"classify": "a classification folder", "detect": "a detection set"}
        raise InputError(f"data {path} is {what[kind]} but the model is a {task} model; give {what[task]} "
                         "in `data`")
    if path.is_file():
        data: ValData = _read_yaml(path, model_names)
    elif kind == "detect":
        data = _read_detect_folder(path, model_names)
    else:
        data = _read_classify(path, model_names)
    return data


def check_data_path(path: Path, option: str = "data") -> None:
    """What needs no model: ``path`` exists and is a folder or a dataset yaml (``option``: the option that gave it)."""
    if not path.exists():
        raise InputError(f"data {path} does not exist; give a folder of class folders, a detection dataset yaml "
                         f"or a folder with images/ and labels/ in `{option}`")
    if path.is_file() and path.suffix.lower() not in (".yaml", ".yml"):
        raise InputError(f"data {path} is a file but not a dataset yaml; give a .yaml (path, val, names) or a "
                         f"folder in `{option}`")


# ---- classification -------------------------------------------------------------------------------------------

def _read_classify(root: Path, model_names: list[str] | None) -> ClassifyData:
    folders = [e for e in _list(root) if e.is_dir()]
    names = {e.name for e in folders}
    if folders and names <= {"train", *SPLITS} and any(s in names for s in SPLITS):
        split = next(s for s in SPLITS if s in names)
        return _read_classify(root / split, model_names)
    if not folders:
        loose = "images but no class subfolders" if _images_in(root) else "no class subfolders"
        raise InputError(f"data folder {root} holds {loose}; give a folder with one subfolder of images per class "
                         "(named after the class), or a detection set (a dataset yaml, or images/ + labels/)")
    if model_names:
        unknown = [e.name for e in folders if e.name not in model_names]
        if unknown:
            shown = ", ".join(model_names[:12]) + (", ..." if len(model_names) > 12 else "")
            raise InputError(f"class folder {unknown[0]!r} in {root} is not one of the model's classes ({shown}); "
                             "name each folder after the model's class")
        names_out = list(model_names)
    else:
        names_out = [e.name for e in folders]  # sorted, as torchvision's ImageFolder numbers classes
    images: list[str] = []
    labels: list[int] = []
    for e in folders:
        found = _images_in(Path(e.path))
        images += found
        labels += [names_out.index(e.name)] * len(found)
    if not images:
        raise InputError(f"data folder {root}: its class folders hold no images ({' '.join(_extensions())}); "
                         "check `data`")
    return ClassifyData(str(root), names_out, images, labels)


# ---- detection ------------------------------------------------------------------------------------------------

def _label_path(image: str) -> str:
    """Ultralytics' ``img2label_paths``: the last /images/ becomes /labels/, the suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = image.rpartition(sa)
    stem = (head + sb + tail) if sep else image
    return os.path.splitext(stem)[0] + ".txt"


def _names_of(raw: Any, where: str) -> list[str]:
    if isinstance(raw, list) and raw:
        return [str(n) for n in raw]
    if isinstance(raw, dict) and raw:
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise InputError(f"{where}: `names` keys must be class indices 0, 1, ...; fix the yaml") from None
        if keys != list(range(len(keys))):
            raise InputError(f"{where}: `names` must number the classes 0..{len(keys) - 1} without gaps; fix the yaml")
        by_int = {int(k): v for k, v in raw.items()}
        return [str(by_int[k]) for k in keys]
    raise InputError(f"{where}: no class `names` (a list, or a mapping index: name); fix the yaml")


def _read_yaml(path: Path, model_names: list[str] | None) -> DetectData:
    try:
        import yaml
    except ImportError:
        from ..errors import RuntimeMissing

        raise RuntimeMissing("reading a dataset yaml needs PyYAML: pip install 'blocks-export[val]'") from None
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"data {path} cannot be read as YAML ({one_line(e)}); fix the file") from None
    if not isinstance(doc, dict):
        raise InputError(f"data {path} is not a dataset yaml (expected keys path, val, names); fix the file")
    root = Path(str(doc.get("path") or "."))
    if not root.is_absolute():
        root = path.parent / root  # relative to the yaml's own folder
    split = doc.get("val") or doc.get("test")
    if not split:
        raise InputError(f"data {path} names no `val` (or `test`) images; add `val: images/val` to the yaml")
    names = _names_of(doc.get("names"), str(path))
    images: list[str] = []
    for item in split if isinstance(split, list) else [split]:
        where = root / str(item)
        if where.is_dir():
            found = _images_in(where)
            if not found and (where / "images").is_dir():
                found = _images_in(where / "images")
            images += found
        elif where.is_file() and where.suffix == ".txt":
            images += _images_listed(where)
        else:
            raise InputError(f"data {path}: val {item!r} is not a folder or image list under {root}; fix `path` or "
                             "`val` in the yaml")
    _check_names(names, model_names, str(path))
    return _with_labels(str(path), names, images)


def _images_listed(listing: Path) -> list[str]:
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"image list {listing} cannot be read ({one_line(e)}); check it") from None
    out = []
    for line in (x.strip() for x in lines):
        if line:
            p = Path(line)
            out.append(str(p if p.is_absolute() else listing.parent / p))
    return out


def _read_detect_folder(root: Path, model_names: list[str] | None) -> DetectData:
    images_dir = root / "images"
    split = next((images_dir / s for s in SPLITS if (images_dir / s).is_dir()), images_dir)
    if not (root / "labels").is_dir():
        raise InputError(f"data folder {root} has images/ but no labels/ beside it; give YOLO label files "
                         "(labels/NAME.txt: class cx cy w h) or a dataset yaml")
    if not model_names:
        raise InputError(f"data folder {root} has no class names and neither has the model; give a dataset yaml "
                         "with `names`")
    return _with_labels(str(root), list(model_names), _images_in(split))


def _check_names(names: list[str], model_names: list[str] | None, where: str) -> None:
    if not model_names or names == list(model_names):
        return
    if len(names) != len(model_names):
        raise InputError(f"{where} names {len(names)} classes but the model has {len(model_names)}; the dataset must "
                         "be the one the model was trained on")
    i = next(k for k, (a, b) in enumerate(zip(names, model_names, strict=True)) if a != b)
    raise InputError(f"{where}: class {i} is {names[i]!r} but the model calls it {model_names[i]!r}; the class "
                     "names must match the model's, in the same order")


def _with_labels(source: str, names: list[str], images: list[str]) -> DetectData:
    if not images:
        raise InputError(f"data {source} holds no images ({' '.join(_extensions())}); check `data`")
    boxes = []
    labelled = 0
    for image in images:
        label = _label_path(image)
        if os.path.isfile(label):
            labelled += 1
            boxes.append(read_labels(label, len(names)))
        else:
            boxes.append(np.zeros((0, 5), dtype=np.float64))
    if not labelled:
        raise InputError(f"data {source}: none of its {len(images)} images has a label file (expected "
                         f"{_label_path(images[0])}); put YOLO labels in labels/ beside images/")
    if not any(len(b) for b in boxes):
        raise InputError(f"data {source}: its label files hold no objects; nothing to measure mAP on")
    return DetectData(source, names, images, boxes)


def read_labels(path: str, nc: int) -> np.ndarray:
    """One YOLO label file -> [K, 5] (class, cx, cy, w, h); a malformed line or a class outside 0..nc-1 is
    ``InputError`` naming the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"label file {path} cannot be read ({one_line(e)}); check it") from None
    rows = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        where = f"label file {path} line {number}"
        if len(fields) != 5:
            raise InputError(f"{where}: {len(fields)} values, expected 5 (class cx cy w h, normalised); detection "
                             "labels only")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise InputError(f"{where}: not numbers ({line.strip()[:60]!r}); expected class cx cy w h") from None
        cls = values[0]
        if not cls.is_integer() or not 0 <= cls < nc:
            raise InputError(f"{where}: class {fields[0]} is out of range (the dataset has {nc} classes, "
                             f"0..{nc - 1}); fix the label")
        cx, cy, w, h = values[1:]
        inside = all(-_COORD_SLACK <= v <= 1 + _COORD_SLACK for v in (cx, cy, w, h))
        if not inside or w <= 0 or h <= 0:
            raise InputError(f"{where}: box {cx:g} {cy:g} {w:g} {h:g} is not normalised to 0..1 with a positive size; "
                             "labels are centre x, y, width, height divided by the image's size")
        rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


__all__ = ["ClassifyData", "DetectData", "ValData", "check_data_path", "read_data", "read_labels"]
