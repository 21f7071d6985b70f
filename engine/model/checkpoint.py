"""Reading safetensors checkpoints tensor by tensor, and their optional sha256 manifest.

`open_checkpoint(path)` yields `(name, TensorSlice)` over a single `model.safetensors` or the shards
listed in `model.safetensors.index.json`. A `TensorSlice` mirrors safetensors' `get_slice` object
(`get_shape()`, `get_dtype()`, `slice[rows, cols]`): a tensor-parallel shard reads only its rows.
Bytes are read with `pread` rather than through an mmap: mapped file pages count towards the
process's resident memory until unmapped, which would make "peak host memory near the quantized
size" impossible; reads leave them in the kernel's page cache, which is not charged to us.

Manifest: `sha256sums.txt` beside the weights, in `sha256sum` format (`<hex>  <file name>` per
line), so `sha256sum -c sha256sums.txt` checks it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MANIFEST_FILE = "sha256sums.txt"
MAX_HEADER_SIZE = 100 * 1024 * 1024  # bytes; a larger safetensors header means a corrupt file

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointError(ValueError):
    """The checkpoint's files are missing, malformed or inconsistent."""


class ChecksumError(CheckpointError):
    """A weights file does not match the sha256 manifest."""

    def __init__(self, file_name: str, message: str) -> None:
        super().__init__(f"{file_name}: {message}")
        self.file_name = file_name


class TensorSlice:
    """Lazy view of one tensor in a safetensors file; indexing reads only what is asked."""

    def __init__(self, fd: int, file_name: str, name: str, info: dict[str, Any], data_start: int) -> None:
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise CheckpointError(f"{file_name}: tensor {name!r} has unsupported dtype {dtype!r}")
        self._fd, self.file_name, self.name = fd, file_name, name
        self._dtype_str = dtype
        self.dtype = _DTYPES[dtype]
        self.shape = tuple(int(d) for d in info["shape"])
        begin, end = info["data_offsets"]
        self._offset = data_start + int(begin)
        self._nbytes = int(end) - int(begin)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        if self._nbytes != math.prod(self.shape) * itemsize:
            raise CheckpointError(f"{file_name}: tensor {name!r} byte range does not match its shape")

    def get_shape(self) -> list[int]:
        return list(self.shape)

    def get_dtype(self) -> str:
        return self._dtype_str

    def _read_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of dim 0 (contiguous bytes) as a fresh tensor."""
        row_elems = math.prod(self.shape[1:])
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        nbytes = (stop - start) * row_elems * itemsize
        buf = bytearray(nbytes)
        view, done = memoryview(buf), 0
        while done < nbytes:
            n = os.preadv(self._fd, [view[done:]], self._offset + start * row_elems * itemsize + done)
            if n <= 0:
                raise CheckpointError(f"{self.file_name}: truncated while reading {self.name!r}")
            done += n
        if nbytes == 0:
            return torch.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        return torch.frombuffer(buf, dtype=self.dtype).view(stop - start, *self.shape[1:])

    def __getitem__(self, index: Any) -> torch.Tensor:
        if not self.shape:
            return self._read_rows(0, 1).view(())
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        if isinstance(first, slice) and first.step in (None, 1):
            start, stop, _ = first.indices(self.shape[0])
            rows = self._read_rows(start, max(start, stop))
            return rows[(slice(None), *rest)] if rest else rows
        return self._read_rows(0, self.shape[0])[index]

    def read(self) -> torch.Tensor:
        """The whole tensor."""
        return self[:]


class SafetensorsFile:
    """One open safetensors file: header parsed, tensors read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        try:
            raw_len = os.pread(self._fd, 8, 0)
            if len(raw_len) != 8:
                raise CheckpointError(f"{path.name}: not a safetensors file (too short)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_SIZE:
                raise CheckpointError(f"{path.name}: header of {header_len} bytes is implausible")
            try:
                header = json.loads(os.pread(self._fd, header_len, 8))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{path.name}: corrupt safetensors header: {exc}") from exc
            header.pop("__metadata__", None)
            self._slices = {n: TensorSlice(self._fd, path.name, n, info, 8 + header_len)
                            for n, info in header.items()}
        except BaseException:
            os.close(self._fd)
            raise

    def keys(self) -> list[str]:
        return list(self._slices)

    def get_slice(self, name: str) -> TensorSlice:
        return self._slices[name]

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def weight_files(path: Path) -> list[str]:
    """The safetensors file names of a checkpoint folder (sharded via the index, or single)."""
    index = path / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{INDEX_FILE}: malformed: {exc}") from exc
        return sorted(set(weight_map.values()))
    if (path / SINGLE_FILE).exists():
        return [SINGLE_FILE]
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")


def open_checkpoint(path: str | Path) -> Iterator[tuple[str, TensorSlice]]:
    """Yield every tensor of the checkpoint as (name, slice), file after file.

    Files stay open until the iteration ends (or the generator is closed), so a slice yielded
    earlier can still be read later: the loader parks the parts of a packed projection (q, k, v
    may sit in different shards) until the last one arrives.
    """
    folder = Path(path)
    with contextlib.ExitStack() as files:
        for fname in weight_files(folder):
            fpath = folder / fname
            if not fpath.exists():
                raise CheckpointError(f"{fname}: listed in {INDEX_FILE} but missing")
            f = files.enter_context(SafetensorsFile(fpath))
            for name in f.keys():
                yield name, f.get_slice(name)


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_checksums(path: str | Path, file_names: Iterable[str]) -> Path:
    """Write `sha256sums.txt` for the given files of the folder `path`."""
    folder = Path(path)
    lines = [f"{sha256_file(folder / n)}  {n}\n" for n in sorted(file_names)]
    manifest = folder / MANIFEST_FILE
    manifest.write_text("".join(lines))
    return manifest


def parse_manifest(text: str) -> dict[str, str]:
    """File name -> sha256 hex digest from the text of a `sha256sums.txt`."""
    expected: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ChecksumError(MANIFEST_FILE, f"line {lineno} is not '<sha256>  <file>'")
        expected[name.strip().lstrip("*")] = digest.lower()
    return expected


def verify_checksums(path: str | Path) -> None:
    """Check every weights file against `sha256sums.txt`; raise `ChecksumError` naming a bad file."""
    folder = Path(path)
    manifest = folder / MANIFEST_FILE
    if not manifest.exists():
        raise ChecksumError(MANIFEST_FILE, f"verification asked but no manifest in {folder}")
    expected = parse_manifest(manifest.read_text())
    for fname in weight_files(folder):
        if fname not in expected:
            raise ChecksumError(fname, f"not listed in {MANIFEST_FILE}")
    for fname, digest in expected.items():
        fpath = folder / fname
        if not fpath.exists():
            raise ChecksumError(fname, "listed in the manifest but missing")
        if sha256_file(fpath) != digest:
            raise ChecksumError(fname, "sha256 does not match the manifest")
