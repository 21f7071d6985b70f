"""Verified weight sync: copy a checkpoint folder, check every file, then switch to it atomically.

The manifest is the loader's own `sha256sums.txt` (`checkpoint.py`: ``<sha256>  <file>`` lines,
``sha256sum -c`` compatible). `write_manifest(folder)` lists every file of the folder; its
*digest* (the sha256 of the manifest's bytes) names the model version: a center reports it in
``Status.weights_digest``.

`sync_checkpoint(src, dst)` copies from a local folder or a plain HTTP(S) URL serving the folder, or
from any `Source` (the CLI's ``grpc://`` source reads a center's ``FetchWeights`` RPC, with an
offset to resume: cli/weights_grpc.py):

1. the source's manifest is read first; file names that would leave the folder are refused;
2. each file is copied into a staging folder beside `dst` (``.<dst>.versions/<digest>.partial``)
   as ``<file>.part``, hashed as it is written, and renamed to ``<file>`` only when its sha256
   matches. An interrupted copy keeps its ``.part``; running the same sync again resumes it (an
   HTTP ``Range`` request, or a seek in a local file). A file that does not match is deleted and
   the sync is refused with `ChecksumMismatch`, naming the file; `dst` is not touched;
3. when every file matches, the staging folder is renamed to ``.<dst>.versions/<digest>`` and
   `dst`, a symlink, is pointed at it with one `os.replace`: readers see the old version or the
   new one, never a mix. Earlier versions stay in the versions folder (a rollback is a re-point).
   The first sync over a plain folder moves that folder into the versions folder first, the one
   step that is not atomic.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from .checkpoint import MANIFEST_FILE, ChecksumError, parse_manifest, sha256_file, write_checksums

CHUNK = 1024 * 1024  # bytes per read
MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # bytes
HTTP_TIMEOUT_S = 30.0  # seconds without progress before an HTTP read fails


class SyncError(Exception):
    """The sync could not finish; the visible version is unchanged."""


class ChecksumMismatch(SyncError):
    """A copied file does not match the manifest; the sync is refused."""

    def __init__(self, file_name: str, expected: str, got: str) -> None:
        super().__init__(f"{file_name}: sha256 {got[:16]}... does not match the manifest {expected[:16]}...")
        self.file_name = file_name


def manifest_files(folder: Path) -> list[str]:
    """Every regular file under `folder` (relative POSIX paths), the manifest itself excepted."""
    names = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != MANIFEST_FILE and not rel.endswith(".part"):
            names.append(rel)
    return names


def manifest_digest(manifest: bytes) -> str:
    """The version's name: the sha256 of the manifest's bytes."""
    return hashlib.sha256(manifest).hexdigest()


def write_manifest(folder: str | Path) -> tuple[Path, str]:
    """Write `sha256sums.txt` for every file of `folder`; returns its path and digest."""
    root = Path(folder)
    if not root.is_dir():
        raise SyncError(f"{root}: not a folder")
    path = write_checksums(root, manifest_files(root))
    return path, manifest_digest(path.read_bytes())


def folder_digest(folder: str | Path) -> str:
    """The manifest digest of a checkpoint folder, or "" when it has no manifest."""
    path = Path(folder) / MANIFEST_FILE
    try:
        return manifest_digest(path.read_bytes())
    except OSError:
        return ""


def safe_name(name: str) -> str:
    """A manifest entry that stays inside the folder, or SyncError."""
    p = PurePosixPath(name)
    if not name or "\\" in name or p.is_absolute() or any(part in ("..", "") for part in p.parts):
        raise SyncError(f"manifest: file name {name[:80]!r} would leave the folder")
    if name == MANIFEST_FILE or name.endswith(".part"):
        raise SyncError(f"manifest: file name {name[:80]!r} is reserved")
    return p.as_posix()


class Source(Protocol):
    description: str  # for messages and the audit log: never credentials

    def read_manifest(self) -> bytes: ...

    def fetch(self, name: str, offset: int) -> tuple[int, Iterator[bytes]]:
        """(the offset the bytes start at: `offset`, or 0 when it cannot resume, the bytes)."""
        ...


class LocalSource:
    """A checkpoint folder on this machine (or a mounted file system)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = str(folder)

    def read_manifest(self) -> bytes:
        path = self.folder / MANIFEST_FILE
        if not path.is_file():
            raise SyncError(f"{self.folder}: no {MANIFEST_FILE} (write one: isthmus weights manifest DIR)")
        return path.read_bytes()[: MAX_MANIFEST_SIZE + 1]

    def fetch(self, name: str, offset: int) -> tuple[int, Iterator[bytes]]:
        path = self.folder / name
        if not path.is_file():
            raise SyncError(f"{name}: listed in the manifest but missing at the source")
        return offset, _read_file(path, offset)


def _read_file(path: Path, offset: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(offset)
        while block := f.read(CHUNK):
            yield block


class HttpSource:
    """A folder served over plain HTTP(S): ``<url>/sha256sums.txt`` and ``<url>/<file>``."""

    def __init__(self, url: str, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        self.base = url if url.endswith("/") else url + "/"
        self.timeout_s = timeout_s
        parts = urllib.parse.urlsplit(url)
        # never show credentials or query tokens in logs, errors or the audit log
        host = f"{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
        self.description = urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))

    def _open(self, name: str, offset: int = 0) -> object:
        req = urllib.request.Request(self.base + urllib.parse.quote(name))
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the partial file is already complete (or longer)
                return None
            raise SyncError(f"{name}: HTTP {exc.code} from {self.description}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SyncError(f"{self.description}: cannot connect ({exc})") from None

    def read_manifest(self) -> bytes:
        resp = self._open(MANIFEST_FILE)
        assert resp is not None
        with resp:  # type: ignore[attr-defined]
            return bytes(resp.read(MAX_MANIFEST_SIZE + 1))  # type: ignore[attr-defined]

    def fetch(self, name: str, offset: int) -> tuple[int, Iterator[bytes]]:
        resp = self._open(name, offset)
        if resp is None:
            return offset, iter(())
        status = getattr(resp, "status", 200)
        start = offset if offset and status == 206 else 0  # a server that ignores Range sends it all
        return start, _read_response(resp)


def _read_response(resp: object) -> Iterator[bytes]:
    """The body in blocks; a body cut short of its Content-Length raises ConnectionError (urllib's
    `read(n)` just stops at a dropped connection, which would look like a complete file)."""
    length = getattr(resp, "headers", {}).get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    received = 0
    with resp:  # type: ignore[attr-defined]
        while block := resp.read(CHUNK):  # type: ignore[attr-defined]
            received += len(block)
            yield bytes(block)
    if expected is not None and received < expected:
        raise ConnectionError(f"connection closed after {received} of {expected} bytes")


def open_source(src: str) -> LocalSource | HttpSource:
    if src.startswith(("http://", "https://")):
        return HttpSource(src)
    if "://" in src:
        scheme = src.split("://", 1)[0]
        raise SyncError(f"{scheme}: unsupported source here (a folder or http(s):// URL; grpc:// via CLI)")
    return LocalSource(Path(src).expanduser())


@dataclass
class SyncResult:
    digest: str  # manifest digest of the version now visible at dst
    version_dir: Path
    num_files: int = 0
    num_bytes_copied: int = 0  # bytes moved this run (less than the total after a resume)
    num_files_resumed: int = 0
    is_up_to_date: bool = False  # dst already showed this version: nothing was copied


def sync_checkpoint(src: str | Source, dst: str | Path) -> SyncResult:
    """Copy `src` (folder, URL or `Source`) to `dst`, verified, resumable, switched atomically
    (see module doc)."""
    source = open_source(src) if isinstance(src, str) else src
    raw = source.read_manifest()
    if len(raw) > MAX_MANIFEST_SIZE:
        raise SyncError(f"{MANIFEST_FILE}: larger than {MAX_MANIFEST_SIZE} bytes")
    try:
        expected = parse_manifest(raw.decode("utf-8"))
    except (ChecksumError, UnicodeDecodeError) as exc:
        raise SyncError(f"{MANIFEST_FILE} at the source: {exc}") from None
    if not expected:
        raise SyncError(f"{MANIFEST_FILE} at the source lists no files")
    names = {safe_name(n): d for n, d in expected.items()}
    digest = manifest_digest(raw)
    dst = Path(dst).expanduser().absolute()
    versions = dst.parent / f".{dst.name}.versions"
    final = versions / digest[:32]
    result = SyncResult(digest, final, num_files=len(names))
    if dst.is_symlink() and dst.resolve() == final.resolve() and final.is_dir():
        result.is_up_to_date = True
        return result
    staging = versions / f"{digest[:32]}.partial"
    versions.mkdir(parents=True, exist_ok=True)
    with _locked(versions):
        if not final.is_dir():
            staging.mkdir(exist_ok=True)
            for name, want in sorted(names.items()):
                _copy_verified(source, name, want, staging, result)
            (staging / MANIFEST_FILE).write_bytes(raw)
            os.rename(staging, final)
        elif staging.exists():
            shutil.rmtree(staging)
        _point(dst, final, versions)
    return result


@contextlib.contextmanager
def _locked(versions: Path) -> Iterator[None]:
    """One sync per destination at a time (a second one is refused, not interleaved)."""
    fd = os.open(versions / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncError(f"{versions}: another sync to this destination is running") from None
        yield
    finally:
        os.close(fd)


def _copy_verified(source: Source, name: str, want: str, staging: Path, result: SyncResult) -> None:
    target = staging / name
    part = target.with_name(target.name + ".part")
    if target.is_file():  # verified by an earlier, interrupted run
        if sha256_file(target) == want:
            return
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    while True:
        if offset:
            result.num_files_resumed += 1
        got = _copy_part(source, name, part, offset, result)
        if got == want:
            os.replace(part, target)
            return
        part.unlink()
        if offset == 0:
            raise ChecksumMismatch(name, want, got)
        offset = 0  # the kept partial may have been the bad part: one fresh copy decides


def _copy_part(source: Source, name: str, part: Path, offset: int, result: SyncResult) -> str:
    """Append `name` to `part` from `offset` (or rewrite it); the sha256 of the whole file."""
    h = hashlib.sha256()
    start, chunks = source.fetch(name, offset)
    with part.open("r+b" if start else "wb") as f:
        if start:
            _hash_prefix(f, start, h)
            f.truncate(start)
            f.seek(start)
        try:
            for block in chunks:
                f.write(block)
                h.update(block)
                result.num_bytes_copied += len(block)
        except (OSError, HTTPException) as exc:  # connection lost: keep what arrived, for a resume
            f.flush()
            raise SyncError(
                f"{name}: copy interrupted after {f.tell()} bytes ({exc or type(exc).__name__}); "
                "run the same sync again to resume"
            ) from None
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def _hash_prefix(f: BinaryIO, length: int, h: hashlib._Hash) -> None:
    done = 0
    while done < length:
        block = f.read(min(CHUNK, length - done))
        if not block:
            break
        h.update(block)
        done += len(block)


def _point(dst: Path, final: Path, versions: Path) -> None:
    """Make `dst` a symlink to `final` with one atomic `os.replace`."""
    tmp = dst.parent / f".{dst.name}.link-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(final, dst.parent), tmp)
    if dst.is_dir() and not dst.is_symlink():  # a plain folder from before: keep it as a version
        os.rename(dst, versions / f"previous-{int(time.time())}")
    os.replace(tmp, dst)
