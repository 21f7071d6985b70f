"""`isthmus weights sync grpc://HOST:PORT DST`: a real `CenterServer` on 127.0.0.1 serves its
checkpoint through the admin-guarded `FetchWeights` RPC; the copy is verified, resumable and
switched atomically like the folder and HTTP ones, and refused without the admin token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from isthmus.center.auth import AdminPolicy, write_admin_token
from isthmus.center.server import CenterServer
from isthmus.center.service import CenterService
from isthmus.center.weights_service import WeightsServer
from isthmus.cli.main import main
from isthmus.cli.weights_grpc import GrpcAuth, GrpcSource
from isthmus.engine.model.checkpoint import MANIFEST_FILE, verify_checksums
from isthmus.engine.model.weights_sync import (
    ChecksumMismatch,
    SyncError,
    folder_digest,
    sync_checkpoint,
)

from tests.cli.test_weights import checkpoint, flip_byte, tree
from tests.cli.test_weights_status import FakeEngine

pytestmark = pytest.mark.timeout(120)


async def served(folder: Path, token_file: Path) -> AsyncIterator[tuple[str, CenterServer]]:
    token = write_admin_token(token_file)
    service = CenterService(FakeEngine(folder), SimpleNamespace(fingerprint="f"), "m")
    server = CenterServer(service, host="127.0.0.1", port=0, admin=AdminPolicy(token=token))
    port = await server.start()
    try:
        yield f"grpc://127.0.0.1:{port}", server
    finally:
        await server.stop()
        service.close()


@pytest.fixture
async def center(tmp_path: Path) -> AsyncIterator[tuple[Path, str, Path]]:
    src = checkpoint(tmp_path / "src", seed=3)
    token_file = tmp_path / "admin.token"
    async for url, _server in served(src, token_file):
        yield src, url, token_file


async def test_grpc_sync_with_the_admin_token_verifies_and_switches(
    tmp_path: Path, center: tuple[Path, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src, url, token_file = center
    dst = tmp_path / "model"
    argv = ["weights", "sync", url, str(dst), "--admin-token-file", str(token_file)]
    assert await asyncio.to_thread(main, argv) == 0, capsys.readouterr().err
    assert tree(dst) == tree(src) and dst.is_symlink()
    assert folder_digest(dst) == folder_digest(src)
    verify_checksums(dst)
    assert "files verified" in capsys.readouterr().out


async def test_grpc_sync_without_the_token_is_refused(
    tmp_path: Path, center: tuple[Path, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _src, url, _token_file = center
    dst = tmp_path / "model"
    assert await asyncio.to_thread(main, ["weights", "sync", url, str(dst)]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and ("UNAUTHENTICATED" in err or "PERMISSION_DENIED" in err)
    assert not dst.exists()


async def test_a_corrupted_byte_over_grpc_is_refused_and_the_old_version_stays(
    tmp_path: Path, center: tuple[Path, str, Path]
) -> None:
    src, url, token_file = center
    dst = tmp_path / "model"
    v1 = checkpoint(tmp_path / "v1", seed=1)
    sync_checkpoint(str(v1), dst)
    flip_byte(src / "model.safetensors", at=300)
    source = GrpcSource(url, GrpcAuth(token_file=str(token_file)))
    try:
        with pytest.raises(ChecksumMismatch, match=r"model\.safetensors"):
            await asyncio.to_thread(sync_checkpoint, source, dst)
    finally:
        source.close()
    assert tree(dst) == tree(v1)


class CutSource(GrpcSource):
    """Drops the connection after `cut` bytes of model.safetensors (once)."""

    cut = 4096

    def fetch(self, name: str, offset: int) -> tuple[int, Iterator[bytes]]:
        start, chunks = super().fetch(name, offset)
        if name != "model.safetensors":
            return start, chunks

        def cut_short() -> Iterator[bytes]:
            block = next(chunks)
            yield block[: self.cut]
            raise ConnectionError("connection reset (test)")

        return start, cut_short()


async def test_an_interrupted_grpc_sync_resumes_from_its_offset(
    tmp_path: Path, center: tuple[Path, str, Path]
) -> None:
    src, url, token_file = center
    dst = tmp_path / "model"
    auth = GrpcAuth(token_file=str(token_file))
    cut = CutSource(url, auth)
    try:
        with pytest.raises(SyncError, match="interrupted"):
            await asyncio.to_thread(sync_checkpoint, cut, dst)
    finally:
        cut.close()
    assert not dst.exists()
    parts = list((tmp_path / ".model.versions").glob("*.partial/model.safetensors.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == CutSource.cut
    source = GrpcSource(url, auth)
    try:
        result = await asyncio.to_thread(sync_checkpoint, source, dst)
    finally:
        source.close()
    assert result.num_files_resumed == 1
    # the files after the cut one, and the cut one from its offset: nothing verified is copied again
    after = sum(len(b) for n, b in tree(src).items() if n > "model.safetensors" and n != MANIFEST_FILE)
    size = (src / "model.safetensors").stat().st_size
    assert result.num_bytes_copied == size - CutSource.cut + after
    assert tree(dst) == tree(src)


async def test_a_partial_copy_longer_than_the_file_restarts_it(
    tmp_path: Path, center: tuple[Path, str, Path]
) -> None:
    src, url, token_file = center
    source = GrpcSource(url, GrpcAuth(token_file=str(token_file)))
    try:
        size = (src / "config.json").stat().st_size
        start, chunks = await asyncio.to_thread(source.fetch, "config.json", size + 10)
        data = await asyncio.to_thread(lambda: b"".join(chunks))
        assert start == 0 and data == (src / "config.json").read_bytes()
    finally:
        source.close()


def test_only_the_manifest_and_its_files_are_served(tmp_path: Path) -> None:
    src = checkpoint(tmp_path / "src", seed=3)
    (src / "secret.txt").write_text("not listed")
    server = WeightsServer(src)
    assert server.resolve(MANIFEST_FILE) == src / MANIFEST_FILE
    assert server.resolve("config.json") == src / "config.json"
    for name in ("secret.txt", "../src/config.json", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(LookupError):
            server.resolve(name)
    with pytest.raises(LookupError, match="no checkpoint folder"):
        WeightsServer(None).resolve("config.json")


async def test_grpc_sync_with_a_client_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from isthmus.center.server import TLSFiles
    from isthmus.edge.tls import ensure_mutual_tls

    src = checkpoint(tmp_path / "src", seed=4)
    tls_dir = tmp_path / "tls"
    ensure_mutual_tls(tls_dir)
    tls = TLSFiles(tls_dir / "center.crt", tls_dir / "center.key", client_ca=tls_dir / "ca.crt")
    service = CenterService(FakeEngine(src), SimpleNamespace(fingerprint="f"), "m")
    server = CenterServer(service, host="127.0.0.1", port=0, tls=tls)  # admin: verified certificates
    port = await server.start()
    try:
        dst = tmp_path / "model"
        argv = ["weights", "sync", f"grpc://127.0.0.1:{port}", str(dst), "--tls-dir", str(tls_dir)]
        assert await asyncio.to_thread(main, argv) == 0, capsys.readouterr().err
        assert tree(dst) == tree(src)
        argv[-1] = str(tmp_path / "nowhere")
        assert await asyncio.to_thread(main, argv) == 1
        assert "--tls-dir" in capsys.readouterr().err
    finally:
        await server.stop()
        service.close()
