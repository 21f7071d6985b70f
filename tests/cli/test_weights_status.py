"""A center replica reports its model folder's manifest digest in `Status.weights_digest`, and the
digest follows `isthmus weights sync` from one version to the next."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import msgspec
from isthmus.center.service import CenterService
from isthmus.engine.core.outputs import EngineLoad
from isthmus.engine.model.weights_sync import folder_digest, sync_checkpoint, write_manifest
from isthmus.models.tiny_checkpoint import make_tiny_checkpoint
from isthmus.protocol import Status


class FakeEngine:
    def __init__(self, model: Path) -> None:
        self.options = SimpleNamespace(model=str(model))

    def load(self) -> EngineLoad:
        return EngineLoad(num_running=0, num_waiting=0, num_free_kv_blocks=1, num_total_kv_blocks=1,
                          tokens_per_s=0.0)


def service(model: Path) -> CenterService:
    return CenterService(FakeEngine(model), SimpleNamespace(fingerprint="f"), "m")


def test_status_carries_the_digest_of_the_synced_version(tmp_path: Path) -> None:
    versions = []
    for seed in (1, 2):
        src = make_tiny_checkpoint(tmp_path / f"v{seed}", "llama", seed=seed)
        _, digest = write_manifest(src)
        versions.append((src, digest))
    dst = tmp_path / "model"
    digests = []
    for src, digest in versions:
        sync_checkpoint(str(src), dst)
        svc = service(dst)
        try:
            status = svc.status()
        finally:
            svc.close()
        assert status.weights_digest == digest == folder_digest(dst)
        decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(status), type=Status)
        assert decoded.weights_digest == digest
        digests.append(status.weights_digest)
    assert digests[0] != digests[1]


def test_a_folder_without_manifest_reports_no_digest(tmp_path: Path) -> None:
    svc = service(tmp_path)
    try:
        assert svc.status().weights_digest == ""
    finally:
        svc.close()
