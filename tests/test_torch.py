"""dl_driver.torch: DlioDataset and make_dataloader on the Rust reader — decoded samples as the files hold them,
zero-copy views, raw bytes, DataLoader workers under fork/spawn/forkserver, ranks x workers disjoint and covering,
seeded epochs, and a mid-epoch resume that yields exactly the rest."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dl_driver
from dl_driver.decode import decode

torch = pytest.importorskip("torch")
from dl_driver.torch import DlioDataset, make_dataloader  # noqa: E402  (after the extra is known to be there)


def workload(tmp_path: Path, fmt: str = "npz", **overrides: Any) -> dl_driver.Config:
    """12 files of one sample each (a sample is known by its bytes), batch 2, generated."""
    loader = "tensorflow" if fmt == "tfrecord" else "pytorch"
    base = {
        "framework": loader,
        "workflow": {"generate_data": True, "train": True, "evaluation": False},
        "dataset": {"format": fmt, "data_folder": str(tmp_path / "data"), "num_files_train": 12, "num_files_eval": 0,
                    "num_samples_per_file": 1, "record_length_bytes": 4096, "num_subfolders_train": 0},
        "reader": {"data_loader": loader, "batch_size": 2, "read_threads": 2, "prefetch_size": 3,
                   "file_shuffle": "seed", "sample_shuffle": "seed"},
        "train": {"epochs": 1, "computation_time": 0.0, "seed": 11},
        "output": {"folder": str(tmp_path / "out")},
    }
    cfg = dl_driver.load_dlio_config(base, overrides)
    dl_driver.generate(cfg)
    return cfg


def key(sample: Any) -> str:
    return hashlib.sha1(sample.numpy().tobytes()).hexdigest()


def epoch_keys(cfg: dl_driver.Config, epoch: int = 1, rank: int = 0, world_size: int = 1) -> list[str]:
    """The epoch's samples (by their bytes) in the order the pipeline reads them for the rank."""
    return [hashlib.sha1(bytes(memoryview(b.data)[s:e])).hexdigest()
            for b in dl_driver.batches(cfg, epoch=epoch, rank=rank, world_size=world_size) for s, e in b.spans]


def test_npz_and_npy_samples_are_numpys_arrays_as_zero_copy_views(tmp_path: Path) -> None:
    for fmt, extra in (("npz", {}), ("npy", {}), ("npz", {"dataset.compression": "zip"})):
        cfg = workload(tmp_path / f"{fmt}{len(extra)}", fmt, **extra)
        raw = [bytes(memoryview(b.data)[s:e]) for b in dl_driver.batches(cfg) for s, e in b.spans]
        items = list(DlioDataset(cfg))
        assert len(items) == len(raw) == 12
        for item, data in zip(items, raw, strict=True):
            expected = np.load(io.BytesIO(data))
            arrays = {"x": expected} if fmt == "npy" else dict(expected)
            assert set(item) == set(arrays)
            for name, array in arrays.items():
                assert item[name].dtype == torch.from_numpy(array).dtype and tuple(item[name].shape) == array.shape
                assert np.array_equal(item[name].numpy(), array)
        # Stored arrays are read-only views into the sample's bytes; a deflated member is inflated into its own.
        array = decode(fmt, memoryview(raw[0]))["x"]
        start = np.frombuffer(raw[0], dtype=np.uint8).__array_interface__["data"][0]
        inside = start <= array.__array_interface__["data"][0] < start + len(raw[0])
        assert inside == ("dataset.compression" not in extra) and array.flags.writeable is False


def hdf5_rows_in_files(folder: Path) -> Counter[bytes]:
    """Every sample of the hdf5 files under ``folder`` as h5py reads it: its records_* rows' bytes, in order."""
    import h5py

    rows: Counter[bytes] = Counter()
    for path in sorted(folder.rglob("*.hdf5")):
        with h5py.File(path, "r") as f:
            names = sorted(n for n in f if n.startswith("records_"))
            for i in range(f[names[0]].shape[0]):
                rows[b"".join(np.asarray(f[n][i]).tobytes() for n in names)] += 1
    return rows


def test_hdf5_samples_are_their_datasets_rows(tmp_path: Path) -> None:
    # dl-driver's files: contiguous datasets, whose rows the pipeline maps; the arrays are views of its buffer.
    cfg = workload(tmp_path, "hdf5", **{
        "dataset.num_samples_per_file": 3, "dataset.record_dims": [4, 6], "dataset.record_element_type": "float32",
        "dataset.hdf5.num_dset_per_record": 2, "dataset.num_files_train": 4})
    items = list(DlioDataset(cfg))
    assert len(items) == 12 and all(set(i) == {"records_0", "records_1"} for i in items)
    assert all(i["records_0"].dtype == torch.float32 and tuple(i["records_0"].shape) == (2, 6) for i in items)
    got = Counter(b"".join(i[n].numpy().tobytes() for n in ("records_0", "records_1")) for i in items)
    assert got == hdf5_rows_in_files(tmp_path / "data" / "train")
    assert not items[0]["records_1"].numpy().flags.owndata
    batch = next(iter(DlioDataset(cfg, batch_size=2)))
    assert tuple(batch["records_0"].shape) == (2, 2, 6)
    # Files the pipeline cannot map (h5py's own layout, as DLIO writes them) are read whole and decoded by h5py.
    import h5py

    dlio = tmp_path / "dlio"
    (dlio / "train").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(4):
        with h5py.File(dlio / "train" / f"img_{i}_of_4.hdf5", "w") as f:
            f.create_dataset("records_0", data=rng.integers(0, 255, size=(3, 8, 8), dtype=np.uint8))
            f.create_dataset("labels", data=np.zeros(3, dtype=np.int64))
    cfg.dataset.data_folder = str(dlio)
    cfg.dataset.record_element_type = "uint8"
    cfg.dataset.hdf5.num_dset_per_record = 1
    items = list(DlioDataset(cfg))
    assert len(items) == 12 and all(tuple(i["records_0"].shape) == (8, 8) for i in items)
    assert Counter(i["records_0"].numpy().tobytes() for i in items) == hdf5_rows_in_files(dlio / "train")


def test_tfrecord_samples_are_the_examples_features(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    cfg = workload(tmp_path, "tfrecord")
    records = [bytes(memoryview(b.data)[s:e]) for b in dl_driver.batches(cfg) for s, e in b.spans]
    for item, record in zip(DlioDataset(cfg), records, strict=True):
        example = tf.train.Example.FromString(record[12:-4])
        features = example.features.feature
        assert set(item) == set(features)
        for name, feature in features.items():
            kind = feature.WhichOneof("kind")
            expected = list(getattr(feature, kind).value)
            if kind == "bytes_list":
                assert item[name].numpy().tobytes() == expected[0]
            else:
                assert item[name].tolist() == expected


def test_image_samples_are_their_pixels(tmp_path: Path) -> None:
    from PIL import Image

    cfg = workload(tmp_path, "png")
    files = [bytes(memoryview(b.data)[s:e]) for b in dl_driver.batches(cfg) for s, e in b.spans]
    for item, data in zip(DlioDataset(cfg), files, strict=True):
        assert np.array_equal(item["x"].numpy(), np.asarray(Image.open(io.BytesIO(data))))


def test_a_format_without_a_decoder_says_so_and_raw_reads_it(tmp_path: Path) -> None:
    cfg = workload(tmp_path, "indexed_binary")
    with pytest.raises(dl_driver.FormatError, match=r"'indexed_binary': samples are not decoded yet.*raw=True"):
        next(iter(DlioDataset(cfg)))
    assert [key(s) for s in DlioDataset(cfg, raw=True)] == epoch_keys(cfg)


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_workers_read_the_same_samples_under_every_start_method(tmp_path: Path, context: str) -> None:
    cfg = workload(tmp_path)
    loader = make_dataloader(cfg, raw=True, batch_size=None, num_workers=2, multiprocessing_context=context)
    assert Counter(key(s) for s in loader) == Counter(epoch_keys(cfg))


def test_ranks_and_workers_are_disjoint_and_cover_the_epoch(tmp_path: Path) -> None:
    cfg = workload(tmp_path)
    seen: list[str] = []
    for rank in range(2):
        loader = make_dataloader(cfg, raw=True, batch_size=None, num_workers=2, rank=rank, world_size=2)
        shard = [key(s) for s in loader]
        # Each rank reads DLIO's shard: its contiguous half of the epoch's global order, whatever the workers.
        assert Counter(shard) == Counter(epoch_keys(cfg, rank=rank, world_size=2))
        seen += shard
    assert Counter(seen) == Counter(epoch_keys(cfg)) and len(set(seen)) == 12


def test_make_dataloader_yields_dlios_batches_as_views_of_the_batch_buffer(tmp_path: Path) -> None:
    cfg = workload(tmp_path)
    samples = list(DlioDataset(cfg))
    loader = make_dataloader(cfg)
    assert loader.num_workers == 0 and loader.dataset.batch_size == 2
    batches = list(loader)
    assert len(batches) == 6 and all(b["x"].shape[0] == 2 for b in batches)
    for i, batch in enumerate(batches):
        for name in ("x", "y"):
            assert torch.equal(batch[name], torch.stack([samples[2 * i][name], samples[2 * i + 1][name]]))
    # npz samples of one shape: the batch's x is a strided view of the pipeline's batch buffer, not a copy.
    # (A copy would be contiguous: the view steps over each sample's npz framing between the arrays.)
    x = batches[0]["x"]
    assert not x.is_contiguous() and x.stride(0) > x[0].numel() and x[0].is_contiguous()
    assert [len(b["x"]) for b in make_dataloader(cfg, batch_size=4)] == [4, 4, 4]
    assert len(list(make_dataloader(cfg, batch_size=None))) == 12
    workers = make_dataloader(cfg, num_workers=2)
    assert workers.prefetch_factor == 3
    assert Counter(key(b["x"][i]) for b in workers for i in range(2)) == Counter(key(s["x"]) for s in samples)
    with pytest.raises(dl_driver.ConfigError, match="batch_size 0: expected an integer >= 1"):
        DlioDataset(cfg, batch_size=0)
    # DLIO's epochs are whole batches; a prefetch_factor without worker processes would name nothing.
    assert len(list(make_dataloader(cfg, drop_last=True))) == 6
    with pytest.raises(dl_driver.ConfigError, match="drop_last=False"):
        make_dataloader(cfg, drop_last=False)
    with pytest.raises(dl_driver.ConfigError, match="prefetch_factor applies to worker processes"):
        make_dataloader(cfg, prefetch_factor=4)


def test_a_batch_of_samples_of_different_shapes_is_stacked_or_refused(tmp_path: Path) -> None:
    # npy samples of one file share a shape; a batch across files of two shapes cannot be one array.
    cfg = workload(tmp_path, "npy", **{"dataset.record_length_bytes_stdev": 4096})
    with pytest.raises(dl_driver.FormatError, match=r"'x' of the batch's samples has shapes .* and .*: one array "
                                                    r"needs one shape; use batch_size=None"):
        list(DlioDataset(cfg, batch_size=12))
    # A deflated npz member is inflated into its own memory: the batch is a stacked copy.
    cfg = workload(tmp_path / "zip", "npz", **{"dataset.compression": "zip"})
    batch = next(iter(DlioDataset(cfg, batch_size=2)))
    assert torch.equal(batch["x"], torch.stack([s["x"] for s in list(DlioDataset(cfg))[:2]]))


def test_seeded_epochs_and_set_epoch(tmp_path: Path) -> None:
    cfg = workload(tmp_path)
    dataset = DlioDataset(cfg, raw=True)
    first = [key(s) for s in dataset]
    assert first == [key(s) for s in dataset] == epoch_keys(cfg, epoch=1)
    dataset.set_epoch(2)
    second = [key(s) for s in dataset]
    assert second == epoch_keys(cfg, epoch=2) and second != first and sorted(second) == sorted(first)


def test_a_resumed_dataset_yields_exactly_the_rest_of_the_epoch(tmp_path: Path) -> None:
    cfg = workload(tmp_path)
    whole = [key(s) for s in DlioDataset(cfg, raw=True, epoch=2)]
    for stop in (0, 1, 2, 5, 11):  # at batch boundaries and inside a batch
        dataset = DlioDataset(cfg, raw=True, epoch=2)
        it = iter(dataset)
        head = [key(next(it)) for _ in range(stop)]
        state = dataset.state_dict()
        resumed = DlioDataset(cfg, raw=True)
        resumed.load_state_dict(state)
        assert head + [key(s) for s in resumed] == whole, (stop, state)
    with pytest.raises(dl_driver.ConfigError, match="expected integers epoch, step and sample"):
        DlioDataset(cfg).load_state_dict({"epoch": 1})


@pytest.mark.parametrize("workers", [0, 2])
def test_torchdatas_stateful_dataloader_resumes_with_exactly_the_rest_of_the_epoch(tmp_path: Path, workers: int) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    cfg = workload(tmp_path)

    def loader() -> StatefulDataLoader:
        return StatefulDataLoader(DlioDataset(cfg, batch_size=2), batch_size=None, num_workers=workers)

    def keys(batch: dict[str, torch.Tensor]) -> list[str]:
        return [key(x) for x in batch["x"]]

    whole = [k for batch in loader() for k in keys(batch)]
    assert len(whole) == 12 == len(set(whole))
    first = loader()
    batches = iter(first)
    seen = [k for _ in range(3) for k in keys(next(batches))]
    state = first.state_dict()
    del batches
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [k for batch in resumed for k in keys(batch)]
    # The resumed loader yields the other 3 batches: nothing twice, nothing lost.
    assert len(rest) == 6 and Counter(seen + rest) == Counter(whole)
    if workers == 0:
        assert seen + rest == whole  # one iterator: the same order too
