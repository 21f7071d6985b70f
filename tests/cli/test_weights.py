"""`isthmus weights manifest|sync`: the loader's manifest, verified copies from a folder and over HTTP
(a real aiohttp server on 127.0.0.1), a corrupted byte refused with the old version left in place,
an interrupted copy resumed with a Range request, and an atomic switch of the visible version."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from isthmus.cli.main import main
from isthmus.engine.model.checkpoint import MANIFEST_FILE, verify_checksums
from isthmus.engine.model.weights_sync import (
    ChecksumMismatch,
    SyncError,
    folder_digest,
    sync_checkpoint,
    write_manifest,
)
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

pytestmark = pytest.mark.timeout(120)


def checkpoint(folder: Path, seed: int) -> Path:
    path = make_tiny_checkpoint(folder, "llama", seed=seed)
    write_manifest(path)  # every file, not only the weights
    return path


def flip_byte(path: Path, at: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def tree(folder: Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def test_manifest_lists_every_file_and_the_loader_accepts_it(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = make_tiny_checkpoint(tmp_path / "m", "llama", seed=1)
    (src / MANIFEST_FILE).unlink(missing_ok=True)
    assert main(["weights", "manifest", str(src)]) == 0
    assert "digest" in capsys.readouterr().out
    listed = {line.split("  ", 1)[1] for line in (src / MANIFEST_FILE).read_text().splitlines()}
    assert listed == set(tree(src)) - {MANIFEST_FILE}
    assert "config.json" in listed and "model.safetensors" in listed
    verify_checksums(src)  # the loader's own check
    assert main(["weights", "manifest", str(tmp_path / "nope")]) == 1


def test_local_sync_verifies_and_switches_atomically(tmp_path: Path) -> None:
    v1 = checkpoint(tmp_path / "v1", seed=1)
    dst = tmp_path / "serving" / "model"
    dst.parent.mkdir()
    assert main(["weights", "sync", str(v1), str(dst), "--audit", str(tmp_path / "audit.log")]) == 0
    assert dst.is_symlink() and tree(dst) == tree(v1)
    verify_checksums(dst)
    assert folder_digest(dst) == folder_digest(v1) != ""
    again = sync_checkpoint(str(v1), dst)
    assert again.is_up_to_date and again.num_bytes_copied == 0
    v2 = checkpoint(tmp_path / "v2", seed=2)
    result = sync_checkpoint(str(v2), dst)
    assert tree(dst) == tree(v2) and result.num_bytes_copied > 0
    record = json.loads((tmp_path / "audit.log").read_text())
    assert (record["action"], record["outcome"]) == ("weights.sync", "ok")
    assert record["details"]["digest"] == folder_digest(v1)


def test_a_corrupted_byte_is_refused_and_the_old_version_stays(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    v1 = checkpoint(tmp_path / "v1", seed=1)
    dst = tmp_path / "model"
    sync_checkpoint(str(v1), dst)
    before, target = tree(dst), dst.resolve()
    v2 = checkpoint(tmp_path / "v2", seed=2)
    flip_byte(v2 / "model.safetensors")  # after its manifest was written
    audit = tmp_path / "audit.log"
    assert main(["weights", "sync", str(v2), str(dst), "--audit", str(audit)]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "model.safetensors" in err and "unchanged" in err
    assert tree(dst) == before and dst.resolve() == target
    assert json.loads(audit.read_text())["outcome"] == "refused"
    with pytest.raises(ChecksumMismatch):
        sync_checkpoint(str(v2), dst)


def test_first_sync_over_a_plain_folder_keeps_it_as_a_version(tmp_path: Path) -> None:
    dst = tmp_path / "model"
    shutil.copytree(checkpoint(tmp_path / "v1", seed=1), dst)
    v2 = checkpoint(tmp_path / "v2", seed=2)
    sync_checkpoint(str(v2), dst)
    assert dst.is_symlink() and tree(dst) == tree(v2)
    kept = list((tmp_path / ".model.versions").glob("previous-*"))
    assert len(kept) == 1 and tree(kept[0]) == tree(tmp_path / "v1")


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", "x.part"])
def test_manifest_names_that_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / MANIFEST_FILE).write_text(f"{'0' * 64}  {name}\n")
    with pytest.raises(SyncError, match="manifest: file name"):
        sync_checkpoint(str(src), tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


# --- over HTTP -------------------------------------------------------------------------------------

class Origin:
    """Serves a folder with Range support; can cut the first download of one file half way."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cut: str | None = None
        self.ranges: list[tuple[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self.folder / name
        if not path.is_file():
            raise web.HTTPNotFound()
        if "Range" in request.headers:
            self.ranges.append((name, request.headers["Range"]))
        if name == self.cut:
            self.cut = None
            data = path.read_bytes()
            resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-file
            return resp
        return web.FileResponse(path)


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[tuple[Origin, str]]:
    folder = checkpoint(tmp_path / "origin", seed=3)
    state = Origin(folder)
    app = web.Application()
    app.router.add_get("/models/m/{name:.+}", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield state, f"http://127.0.0.1:{port}/models/m"
    await runner.cleanup()


async def test_http_sync_verifies_every_file(tmp_path: Path, origin: tuple[Origin, str]) -> None:
    state, url = origin
    dst = tmp_path / "model"
    result = await asyncio.to_thread(sync_checkpoint, url, dst)
    assert tree(dst) == tree(state.folder) and result.num_files_resumed == 0
    verify_checksums(dst)


async def test_an_interrupted_http_sync_resumes_with_a_range_request(
    tmp_path: Path, origin: tuple[Origin, str]
) -> None:
    state, url = origin
    dst = tmp_path / "model"
    weights = state.folder / "model.safetensors"
    size = weights.stat().st_size
    state.cut = "model.safetensors"
    with pytest.raises(SyncError, match="interrupted") as info:
        await asyncio.to_thread(sync_checkpoint, url, dst)
    assert "resume" in str(info.value) and not dst.exists()
    parts = list((tmp_path / ".model.versions").glob("*.partial/model.safetensors.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < size
    kept = parts[0].stat().st_size
    result = await asyncio.to_thread(sync_checkpoint, url, dst)
    assert state.ranges == [("model.safetensors", f"bytes={kept}-")]
    assert result.num_files_resumed == 1
    assert result.num_bytes_copied < sum(len(b) for b in tree(state.folder).values())
    assert tree(dst) == tree(state.folder)


async def test_a_corrupted_byte_over_http_is_refused(tmp_path: Path, origin: tuple[Origin, str]) -> None:
    state, url = origin
    dst = tmp_path / "model"
    v1 = checkpoint(tmp_path / "v1", seed=1)
    sync_checkpoint(str(v1), dst)
    flip_byte(state.folder / "config.json", at=5)
    with pytest.raises(ChecksumMismatch, match=r"config\.json"):
        await asyncio.to_thread(sync_checkpoint, url, dst)
    assert tree(dst) == tree(v1)


def test_a_server_without_range_support_restarts_the_cut_file(tmp_path: Path) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    src = checkpoint(tmp_path / "src", seed=4)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(src))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dst = tmp_path / "model"
        staging = tmp_path / ".model.versions" / f"{folder_digest(src)[:32]}.partial"
        staging.mkdir(parents=True)
        (staging / "model.safetensors.part").write_bytes(b"stale bytes from an earlier try")
        result = sync_checkpoint(f"http://127.0.0.1:{server.server_address[1]}", dst)
        assert tree(dst) == tree(src) and result.num_files_resumed == 1
    finally:
        server.shutdown()
        server.server_close()


def test_a_second_sync_to_the_same_destination_is_refused_while_one_runs(tmp_path: Path) -> None:
    import fcntl
    import os

    src = checkpoint(tmp_path / "src", seed=5)
    versions = tmp_path / ".model.versions"
    versions.mkdir()
    fd = os.open(versions / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running sync holds it
        with pytest.raises(SyncError, match="another sync"):
            sync_checkpoint(str(src), tmp_path / "model")
    finally:
        os.close(fd)
    sync_checkpoint(str(src), tmp_path / "model")
    assert tree(tmp_path / "model") == tree(src)


def test_bad_sources_are_clear_errors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["weights", "sync", "ftp://host/m", str(tmp_path / "d")]) == 1
    assert "unsupported source" in capsys.readouterr().err
    assert main(["weights", "sync", str(tmp_path), str(tmp_path / "d")]) == 1
    assert "isthmus weights manifest" in capsys.readouterr().err
    assert main(["weights", "sync", "http://127.0.0.1:9/m", str(tmp_path / "d")]) == 1
    assert "cannot connect" in capsys.readouterr().err
