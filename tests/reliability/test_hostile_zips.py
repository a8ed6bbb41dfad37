"""Malformed and inflating zip archives given as MODEL: each is built byte by byte as an attacker would and must
end in one line with exit code 2 (never "unexpected", never gigabytes of memory)."""

from __future__ import annotations

import functools
import io
import struct
import zipfile
from pathlib import Path

import pytest
from bad_inputs import cli, listing, one_error_line


def _state_dict_zip() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    return buf.getvalue()


def _non_utf8_names() -> bytes:
    """Member names with a 0xFF byte, while the general-purpose flag (bit 11) says they are UTF-8."""
    data = bytearray(_state_dict_zip().replace(b"archive/data.pkl", b"archive/d\xffta.pkl"))
    for signature, flag_offset in ((b"PK\x03\x04", 7), (b"PK\x01\x02", 9)):
        pos = data.find(signature)
        while pos >= 0:
            data[pos + flag_offset] |= 0x08
            pos = data.find(signature, pos + 4)
    return bytes(data)


def _multi_disk() -> bytes:
    """A zip64 end-of-central-directory locator, just before the end record, that says the archive spans 2 disks."""
    data = _state_dict_zip()
    end = data.rfind(b"PK\x05\x06")
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, 0, 2)
    return data[:end] + locator + data[end:]


@functools.cache
def _bomb(member: str) -> bytes:
    """A small archive whose deflated member inflates to 256 MiB of zeros (written in chunks, never held)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/version", b"3\n")
        with z.open(member, "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(256):
                f.write(chunk)
    return buf.getvalue()


def _declared_bomb() -> bytes:
    """A stored member whose central-directory entry declares 3 GiB (torch's reader allocates what is declared)."""
    data = bytearray(_state_dict_zip())
    pos = data.find(b"PK\x01\x02")
    data[pos + 24:pos + 28] = struct.pack("<I", 3 << 30)  # uncompressed size
    return bytes(data)


CASES = {
    "non-UTF-8 member names": (_non_utf8_names, "not a readable zip archive"),
    "multi-disk": (_multi_disk, "not a readable zip archive"),
    "deflate bomb as .pt": (lambda: _bomb("archive/data.pkl"), "decompression bomb"),
    "deflate bomb in a .pt2": (lambda: _bomb("archive/data/sample_inputs/model.pt"), "decompression bomb"),
    "declared 3 GiB member": (_declared_bomb, "decompression bomb"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("trust", [False, True], ids=["", "trust_pickle"])
def test_malformed_or_inflating_zip_is_one_line_exit_2(tmp_path: Path, case: str, trust: bool) -> None:
    build, words = CASES[case]
    src = tmp_path / ("model.pt2" if ".pt2" in case else "model.pt")
    src.write_bytes(build())
    for command in (["export", src, "--to", "onnx", "-o", tmp_path / "out.onnx"], ["inspect", src]):
        code, _out, err = cli(*command, *(["--trust-pickle"] if trust else []))
        line = one_error_line(err)
        assert code == 2, err
        assert words in line and "unexpected" not in line, line
    assert listing(tmp_path) == [src.name]


def test_the_bomb_is_small_on_disk_so_the_cap_is_what_stops_it() -> None:
    data = _bomb("archive/data.pkl")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        inflated = sum(i.file_size for i in z.infolist())
    assert len(data) < 1 << 20 and inflated >= 256 << 20
