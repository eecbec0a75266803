"""dl_driver.torch.StorageWriter / StorageReader: torch.distributed.checkpoint's save, async_save and load on every
backend, a failed save leaving no metadata, and checkpoint ids DCP can tell apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402

from dl_driver.torch import StorageReader, StorageWriter  # noqa: E402
from test_run import backend_location  # noqa: E402


def state() -> dict[str, Any]:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.ReLU(), torch.nn.Linear(200, 3)).to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 300, dtype=torch.bfloat16)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "big": torch.randn(3 << 20)}


def zeros_like(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    if isinstance(value, dict):
        return {k: zeros_like(v) for k, v in value.items()}
    if isinstance(value, list):
        return [zeros_like(v) for v in value]
    return value


def assert_equal(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_equal(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_equal(x, y)
    else:
        assert a == b


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("backend", ["file", "direct", "s3-moto", "az-azurite"])
def test_dcp_saves_async_saves_and_loads_on_every_backend(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    location, options = backend_location(backend, tmp_path, request)
    saved = state()
    uri = f"{location}/dcp"
    dcp.save(saved, storage_writer=StorageWriter(uri, storage_options=options), no_dist=True)
    loaded = zeros_like(saved)
    dcp.load(loaded, storage_reader=StorageReader(uri, storage_options=options), no_dist=True)
    assert_equal(loaded, saved)
    pending = dcp.async_save(saved, storage_writer=StorageWriter(f"{location}/async", storage_options=options), no_dist=True)
    (pending.result() if hasattr(pending, "result") else pending.upload_completion.result())
    again = zeros_like(saved)
    dcp.load(again, storage_reader=StorageReader(f"{location}/async", storage_options=options), no_dist=True)
    assert_equal(again, saved)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_failed_save_names_the_file_and_leaves_no_metadata_and_ids_are_validated(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the checkpoint's folder would be")
    uri = f"file://{tmp_path}/blocker/dcp"
    # DCP wraps the storage error, which names the file and what went wrong.
    with pytest.raises(CheckpointException, match=r"blocker/dcp/\.metadata: head failed: .*Not a directory"):
        dcp.save(state(), storage_writer=StorageWriter(uri), no_dist=True)
    assert not list(tmp_path.rglob("*.metadata"))
    assert StorageWriter.validate_checkpoint_id("s3://bucket/ckpt") and StorageReader.validate_checkpoint_id("az://c/ckpt")
    assert not StorageWriter.validate_checkpoint_id("/plain/path")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_sync_files_flushes_every_file_including_the_metadata_and_can_be_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dl_driver._core

    real = dl_driver._core.StateWriter
    opened: list[tuple[str, bool]] = []

    def recording(uri: str, key: str, rank: int = 0, zstd: int | None = None, options: Any = None, fsync: bool = False) -> Any:
        opened.append((key, fsync))
        return real(uri, key, rank, zstd, options, fsync)

    monkeypatch.setattr(dl_driver._core, "StateWriter", recording)
    saved = state()
    dcp.save(saved, storage_writer=StorageWriter(f"file://{tmp_path}/synced"), no_dist=True)  # FileSystemWriter's default
    assert {key for key, _ in opened} >= {".metadata", "__0_0.distcp"}, opened
    assert all(sync for _, sync in opened), opened
    opened.clear()
    dcp.save(saved, storage_writer=StorageWriter(f"file://{tmp_path}/unsynced", sync_files=False), no_dist=True)
    assert opened and not any(sync for _, sync in opened), opened
    for name in ("synced", "unsynced"):
        loaded = zeros_like(saved)
        dcp.load(loaded, storage_reader=StorageReader(f"file://{tmp_path}/{name}"), no_dist=True)
        assert_equal(loaded, saved)
    assert not list(tmp_path.rglob("*.tmp")), "the temporary metadata was renamed"
