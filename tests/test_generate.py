"""Dataset generation: DLIO's layout and formats, readable by the libraries the world uses, on every backend,
resumable after an interruption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dl_driver
from tests_support import DL_DRIVER, npy_shape, numpy_shapes

MIB = 1024 * 1024


def config(tmp_path: Path, fmt: str, **dataset: object) -> dl_driver.Config:
    base = {"framework": "pytorch", "reader": {"data_loader": "pytorch"}, "workflow": {"generate_data": True}}
    overrides = {"dataset.format": fmt, "dataset.data_folder": str(tmp_path / "data"), **{f"dataset.{k}": v for k, v in dataset.items()}}
    return dl_driver.load_dlio_config(base, overrides)


def test_npz_files_load_in_numpy_with_dlio_names_and_shapes(tmp_path: Path) -> None:
    cfg = config(tmp_path, "npz", num_files_train=4, num_files_eval=2, num_samples_per_file=3, record_length_bytes=1_048_576,
                 record_length_bytes_stdev=262_144, num_subfolders_train=2, num_subfolders_eval=0)
    report = dl_driver.generate(cfg, threads=2)
    assert report["files_written"] == 6
    shapes = numpy_shapes(1_048_576, 262_144, 6)
    names = sorted(str(p.relative_to(tmp_path / "data")) for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert names == ["train/0/img_0_of_4.npz", "train/0/img_2_of_4.npz", "train/1/img_1_of_4.npz",
                     "train/1/img_3_of_4.npz", "valid/img_0_of_2.npz", "valid/img_1_of_2.npz"]
    for i in range(4):
        with np.load(tmp_path / "data" / "train" / str(i % 2) / f"img_{i}_of_4.npz") as f:
            assert f["x"].shape == (*shapes[i], 3) and f["x"].dtype == np.uint8
            assert f["y"].shape == (3,) and f["y"].dtype == np.int64 and not f["y"].any()
            assert len(np.unique(f["x"])) > 200, "random bytes"
    with np.load(tmp_path / "data" / "valid" / "img_1_of_2.npz") as f:
        assert f["x"].shape == (*shapes[5], 3), "eval shapes continue after the train files"


def test_dlios_folders_exist_even_for_a_split_without_files(tmp_path: Path) -> None:
    # DLIO's training lists valid/ (and each subfolder) even with num_files_eval 0: FileNotFoundError if missing.
    cfg = config(tmp_path, "npy", num_files_train=3, num_files_eval=0, num_samples_per_file=1, record_length_bytes=4096,
                 num_subfolders_train=2, num_subfolders_eval=3)
    def folders() -> list[str]:
        return sorted(str(p.relative_to(tmp_path / "data")) for p in (tmp_path / "data").rglob("*") if p.is_dir())

    dl_driver.generate(cfg, rank=1, world_size=2)
    assert folders() == ["train", "train/1"], "rank 0 creates the folders, as DLIO's generator does"
    dl_driver.generate(cfg, rank=0, world_size=2)
    assert folders() == ["train", "train/0", "train/1", "valid", "valid/0", "valid/1", "valid/2"]
    assert not any((tmp_path / "data" / "valid").rglob("*.npy"))


def test_npy_files(tmp_path: Path) -> None:
    cfg = config(tmp_path, "npy", num_files_train=3, num_samples_per_file=2, record_length_bytes=65_536)
    dl_driver.generate(cfg)
    for i in range(3):
        x = np.load(tmp_path / "data" / "train" / f"img_{i}_of_3.npy")
        assert x.shape == (256, 256, 2) and x.dtype == np.uint8


def test_ranks_write_disjoint_files(tmp_path: Path) -> None:
    cfg = config(tmp_path, "npy", num_files_train=5, record_length_bytes=4096)
    written = [int(dl_driver.generate(cfg, rank=rank, world_size=2)["files_written"]) for rank in range(2)]
    assert written == [3, 2]
    assert len(list((tmp_path / "data" / "train").iterdir())) == 5


@pytest.mark.parametrize("backend", ["file", "direct", "s3-moto", "az-azurite"])
def test_every_backend_gets_the_same_files(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from test_storage_conformance import AZURITE_KEY, azure_container, s3_bucket

    run = f"gen-{os.getpid()}-{time.monotonic_ns()}"
    options: dict[str, str] = {}
    if backend in ("file", "direct"):
        folder = f"{backend}://{tmp_path / 'data'}"
    elif backend == "s3-moto":
        endpoint = request.getfixturevalue("servers")["moto"]
        s3_bucket(endpoint, "dl-driver-tests")
        folder = f"s3://dl-driver-tests/{run}"
        options = {"endpoint_url": endpoint, "access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}
    else:
        endpoint = request.getfixturevalue("servers")["azurite"]
        azure_container(endpoint, "dl-driver-tests")
        folder = f"az://dl-driver-tests/{run}"
        options = {"account_name": "devstoreaccount1", "account_key": AZURITE_KEY, "endpoint": endpoint}
    cfg = config(tmp_path, "npz", data_folder=folder, num_files_train=4, num_files_eval=1, record_length_bytes=300_000,
                 record_length_bytes_stdev=50_000, num_subfolders_train=0, num_subfolders_eval=0)
    cfg.storage.storage_options = options
    dl_driver.generate(cfg)
    store = dl_driver.storage.open(folder, **options)
    listing = [(o.key, o.size) for o in store.list()]
    reference = config(tmp_path / "ref", "npz", num_files_train=4, num_files_eval=1, record_length_bytes=300_000,
                       record_length_bytes_stdev=50_000, num_subfolders_train=0, num_subfolders_eval=0)
    dl_driver.generate(reference)
    ref_store = dl_driver.storage.open(str(tmp_path / "ref" / "data"))
    assert listing == [(o.key, o.size) for o in ref_store.list()]
    assert store.get(listing[0][0]) == ref_store.get(listing[0][0]), "content is deterministic too"


def test_ctrl_c_during_generate_exits_130_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = [DL_DRIVER, "generate", "workload=default", "++workload.dataset.format=npy", f"++workload.dataset.data_folder={data}",
            "++workload.workflow.evaluation=False", "++workload.dataset.num_files_train=4800", "++workload.dataset.num_files_eval=0",
            "++workload.dataset.num_subfolders_train=0", "++workload.dataset.record_length_bytes=16777216", "--threads", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((data / "train").glob("img_*")):  # the generation is under way (4800 files would take minutes)
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        "dl-driver generate: interrupted; the files already there are complete: add --skip-existing to finish"], stderr
    visible = sorted((data / "train").glob("img_*"))
    assert 1 <= len(visible) < 4800
    for path in visible:
        assert npy_shape(path) == (4096, 4096, 1), f"{path.name} is visible but incomplete"


def test_interrupted_generation_resumes_to_a_complete_dataset(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = [DL_DRIVER, "generate", "workload=default", "++workload.dataset.format=npy", f"++workload.dataset.data_folder={data}",
            "++workload.workflow.evaluation=False", "++workload.dataset.num_files_train=48", "++workload.dataset.num_files_eval=0",
            "++workload.dataset.num_subfolders_train=0",
            "++workload.dataset.record_length_bytes=16777216", "--threads", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((data / "train").glob("img_*"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    visible = sorted((data / "train").glob("img_*"))
    assert 3 <= len(visible) < 48, "killed in the middle"
    for path in visible:
        assert npy_shape(path) == (4096, 4096, 1), f"{path.name} is visible but incomplete"
    out = subprocess.run([*args, "--skip-existing"], capture_output=True, text=True, check=True)
    assert f"({len(visible)} already present)" in out.stdout
    final = sorted((data / "train").iterdir())
    assert [p.name for p in final] == [f"img_{i:02d}_of_48.npy" for i in range(48)], "no temporary files left"
    for path in final:
        assert npy_shape(path) == (4096, 4096, 1)


def test_generate_command_reports_and_rejects_bad_input(cli, tmp_path: Path) -> None:
    out = cli("generate", "workload=default", f"++workload.dataset.data_folder={tmp_path / 'd'}", "++workload.dataset.num_files_train=2",
              "++workload.workflow.evaluation=False", "++workload.dataset.num_files_eval=0")
    assert out.returncode == 0, out.stderr
    assert "generated 2 files (0 already present)" in out.stdout
    out = cli("generate", "workload=default", "--rank", "3", "--world-size", "2")
    assert out.returncode == 2 and "rank 3" in out.stderr


def dataset(tmp_path: Path, fmt: str, **extra: object) -> Path:
    loader = "tensorflow" if fmt == "tfrecord" else "pytorch"
    base = {"framework": loader, "reader": {"data_loader": loader}}
    overrides = {"dataset.format": fmt, "dataset.data_folder": str(tmp_path / fmt), "dataset.num_files_train": 3,
                 "dataset.num_files_eval": 1, "dataset.num_samples_per_file": 4, "dataset.record_length_bytes": 40_000,
                 "dataset.record_length_bytes_stdev": 8_000, **extra}
    dl_driver.generate(dl_driver.load_dlio_config(base, overrides))
    return tmp_path / fmt


def test_hdf5_opens_in_h5py(tmp_path: Path) -> None:
    import h5py

    root = dataset(tmp_path, "hdf5", **{"dataset.record_element_type": "float32"})
    shapes = numpy_shapes(40_000, 8_000, 4)
    for i in range(3):
        with h5py.File(root / "train" / f"img_{i}_of_3.hdf5", "r") as f:
            # DLIO HEAD reads records_0, DLIO 2.0.0 records: both names link the same dataset.
            assert set(f) == {"records_0", "records", "labels"}
            assert f["records"] == f["records_0"] and f["records"][:].tobytes() == f["records_0"][:].tobytes()
            assert f["records_0"].shape == (4, *shapes[i]) and f["records_0"].dtype == np.float32
            assert f["labels"].shape == (4,) and f["labels"].dtype == np.int64 and not f["labels"][:].any()
            assert f["records_0"][2].shape == shapes[i], "a sample slice reads"
    root = dataset(tmp_path / "multi", "hdf5", **{"dataset.record_dims": [6, 5], "dataset.record_length_bytes_stdev": 0,
                                                  "dataset.hdf5.num_dset_per_record": 3})
    with h5py.File(root / "valid" / "img_0_of_1.hdf5", "r") as f:
        assert [f[f"records_{k}"].shape for k in range(3)] == [(4, 2, 5)] * 3


def test_chunked_and_gzip_hdf5_open_in_h5py_and_train(tmp_path: Path) -> None:
    import h5py

    fixed = {"dataset.record_length_bytes": 300_000, "dataset.record_length_bytes_stdev": 0}
    cases = {
        # DLIO 2.0.0's keys: (1, c, c) chunks with c = ceil(sqrt(chunk_size)); 3 x 18 x 18 chunks need a 2-level index.
        "dlio": ({"dataset.enable_chunking": True, "dataset.chunk_size": 1000}, (1, 32, 32), None),
        "dims": ({"dataset.hdf5.chunk_dims": [2, 100, 64], "dataset.hdf5.max_shape": [8, 547, 600]}, (2, 100, 64), None),
        # 4 x 69 x 69 chunks: a 3-level index (298 leaves, 5 inner nodes, the root).
        "deep": ({"dataset.hdf5.chunk_dims": [1, 8, 8]}, (1, 8, 8), None),
        # Without chunk dimensions: about 1 MiB of whole samples per chunk (3 of 292 KiB).
        "gzip": ({"dataset.compression": "gzip", "dataset.compression_level": 6}, (3, 547, 547), "gzip"),
        "gzip-compressible": ({"dataset.compression": "gzip", "dataset.compress_ratio": 4.0}, (3, 547, 547), "gzip"),
        "lzf-compressible": ({"dataset.compression": "lzf", "dataset.compress_ratio": 4.0}, (3, 547, 547), "lzf"),
        "lzf": ({"dataset.compression": "lzf", "dataset.hdf5.chunk_dims": [1, 64, 64]}, (1, 64, 64), "lzf"),
    }
    for name, (extra, chunks, compression) in cases.items():
        root = dataset(tmp_path / name, "hdf5", **fixed, **extra)
        for path in sorted(root.rglob("*.hdf5")):
            with h5py.File(path, "r") as f:
                records = f["records_0"]
                assert records.shape == (4, 547, 547) and records.chunks == chunks, name
                assert records.compression == compression, name
                data = records[:]
                zeros = float((data == 0).mean())
                if name.endswith("-compressible"):
                    assert 0.7 < zeros < 0.8, f"{name}: 3 of 4 bytes of each 4 KiB block are zeros, got {zeros}"
                    assert path.stat().st_size < data.nbytes / 2, f"{name}: really compressed"
                else:
                    # Every chunk is found through the index: a chunk it missed would read as fill value zeros.
                    assert zeros < 0.01 and data[:, -5:, -5:].any(), f"{name}: {zeros:.3f} zeros"
                assert not f["labels"][:].any()
                if name == "dims":
                    assert records.maxshape == (8, 547, 600)
                if name == "gzip":
                    assert records.compression_opts == 6
        cfg = dl_driver.load_dlio_config({"framework": "pytorch", "reader": {"data_loader": "pytorch", "batch_size": 2}},
                                         {"dataset.format": "hdf5", "dataset.data_folder": str(root),
                                          "dataset.num_files_train": 3, "dataset.num_files_eval": 1,
                                          "dataset.num_samples_per_file": 4, **fixed, **extra})
        assert sum(len(b.samples) for b in dl_driver.batches(cfg)) == 12, f"{name}: training reads every sample"


def test_images_open_in_pillow(tmp_path: Path) -> None:
    from PIL import Image

    shapes = numpy_shapes(40_000, 8_000, 4)
    for fmt in ("png", "jpeg"):
        root = dataset(tmp_path, fmt)
        for i in range(3):
            with Image.open(root / "train" / f"img_{i}_of_3.{fmt}") as image:
                image.load()
                assert (image.mode, image.size) == ("L", (shapes[i][1], shapes[i][0]))


def test_csv_reads_in_numpy(tmp_path: Path) -> None:
    import gzip

    shapes = numpy_shapes(40_000, 8_000, 4)
    root = dataset(tmp_path, "csv")
    # As DLIO writes it (pandas' to_csv defaults: a header line and an index column) and reads it: every sample is a
    # row of pd.read_csv(path).to_numpy() (a file without the header line lost its first row there).
    values = shapes[1][0] * shapes[1][1]
    path = root / "train" / "img_1_of_3.csv"
    assert path.read_text().splitlines()[0] == "," + ",".join(str(c) for c in range(values))
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64, skiprows=1)
    assert rows.shape == (4, 1 + values) and list(rows[:, 0]) == [0, 1, 2, 3], "the index column"
    rows = rows[:, 1:]
    assert (rows == rows[0]).all() and rows.min() >= 0 and rows.max() <= 255, "identical rows of byte values, as DLIO"
    import pandas  # DLIO reads csv with pandas
    assert pandas.read_csv(path).to_numpy().shape == (4, 1 + values)
    root = dataset(tmp_path / "gz", "csv", **{"dataset.compression": "gzip"})
    with gzip.open(root / "train" / "img_0_of_3.csv.gz", "rt") as f:
        assert len(f.read().splitlines()) == 1 + 4


def test_compressed_csv_is_the_plain_csv_through_the_standard_library(tmp_path: Path) -> None:
    """pandas' to_csv(compression=...) as DLIO calls it: `.csv.gz/.bz2/.xz` streams and a `.csv.zip` of one deflated
    member named as the file without `.zip`; Python's own modules (no pandas) decompress them to the plain csv."""
    import bz2
    import gzip
    import lzma
    import zipfile

    plain = dataset(tmp_path / "none", "csv")
    names = sorted(str(p.relative_to(plain)) for p in plain.rglob("*") if p.is_file())
    assert len(names) == 4
    decompress = {"gzip": gzip.decompress, "bz2": bz2.decompress, "xz": lzma.decompress}
    for compression, suffix in [("gzip", "gz"), ("bz2", "bz2"), ("xz", "xz"), ("zip", "zip")]:
        root = dataset(tmp_path / compression, "csv", **{"dataset.compression": compression})
        written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert written == [f"{name}.{suffix}" for name in names], compression
        for name in names:
            path = root / f"{name}.{suffix}"
            if compression == "zip":
                with zipfile.ZipFile(path) as z:
                    (member,) = z.infolist()
                    assert member.filename == Path(name).name and member.filename.endswith(".csv")
                    assert member.compress_type == zipfile.ZIP_DEFLATED
                    text = z.read(member)
            else:
                text = decompress[compression](path.read_bytes())
            assert text == (plain / name).read_bytes(), f"{compression}: {name} decompresses to the plain csv"
            # A header line, then rows of an index and the values (pandas' to_csv defaults, as DLIO writes).
            rows = np.loadtxt(text.decode().splitlines(), delimiter=",", dtype=np.int64, ndmin=2, skiprows=1)
            assert (rows == np.loadtxt(plain / name, delimiter=",", dtype=np.int64, ndmin=2, skiprows=1)).all()
            assert rows.shape[0] == 4 and (rows[:, 1:] == rows[0, 1:]).all(), "4 identical rows, as DLIO"
        cfg = dl_driver.load_dlio_config({"framework": "pytorch", "reader": {"data_loader": "pytorch", "batch_size": 2}},
                                         {"dataset.format": "csv", "dataset.data_folder": str(root),
                                          "dataset.compression": compression, "dataset.num_files_train": 3,
                                          "dataset.num_files_eval": 1, "dataset.num_samples_per_file": 4,
                                          "dataset.record_length_bytes": 40_000, "dataset.record_length_bytes_stdev": 8_000})
        assert sum(len(b.samples) for b in dl_driver.batches(cfg)) == 12, f"{compression}: training reads every sample"


def test_csv_compression_level_is_used(tmp_path: Path) -> None:
    """bzip2 writes its level (the block size, 1-9) in its header: dataset.compression_level reaches the encoder,
    clamped into the codec's range (0 means 1 for bzip2); the other codecs decompress at every level."""
    import bz2
    import gzip
    import lzma

    for level, header in [(9, b"BZh9"), (0, b"BZh1")]:
        root = dataset(tmp_path / f"bz2-{level}", "csv",
                       **{"dataset.compression": "bz2", "dataset.compression_level": level})
        path = root / "train" / "img_0_of_3.csv.bz2"
        assert path.read_bytes()[:4] == header
        assert len(bz2.decompress(path.read_bytes()).splitlines()) == 1 + 4, "the header line and 4 rows"
    sizes, dictionaries = {}, {}
    for compression, suffix, decompress in [("gzip", "gz", gzip.decompress), ("xz", "xz", lzma.decompress)]:
        for level in (0, 9):
            root = dataset(tmp_path / f"{compression}-{level}", "csv",
                           **{"dataset.compression": compression, "dataset.compression_level": level})
            data = (root / "train" / f"img_0_of_3.csv.{suffix}").read_bytes()
            assert len(decompress(data).splitlines()) == 1 + 4
            sizes[compression, level] = len(data)
            if compression == "xz":
                dictionaries[level] = xz_dictionary_bytes(data)
    assert sizes["gzip", 0] > sizes["gzip", 9], "gzip level 0 stores, 9 compresses"
    # xz presets pick the LZMA2 dictionary: preset 0 has 256 KiB; 9 is capped at pandas' default preset 6 (8 MiB:
    # presets 7-9 need 0.2-0.7 GiB of encoder memory per file being written), which compresses better.
    assert dictionaries == {0: 256 << 10, 9: 8 << 20}, dictionaries
    assert sizes["xz", 0] > sizes["xz", 9], sizes


def xz_dictionary_bytes(data: bytes) -> int:
    """The LZMA2 dictionary size in an .xz stream's first block header (the xz file format, sections 2.1 and 5.3.1)."""

    def varint(at: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            byte = data[at]
            value |= (byte & 0x7F) << shift
            at, shift = at + 1, shift + 7
            if not byte & 0x80:
                return value, at

    flags, at = data[13], 14  # after the 12-byte stream header and the block header's size byte
    for present in (0x40, 0x80):  # compressed and uncompressed sizes, when the header holds them
        if flags & present:
            _, at = varint(at)
    filter_id, at = varint(at)
    size, at = varint(at)
    assert (filter_id, size) == (0x21, 1), "the first filter is LZMA2 with its one property byte"
    bits = data[at]
    return (2 | (bits & 1)) << (bits // 2 + 11)


def test_indexed_binary_offsets_and_sizes(tmp_path: Path) -> None:
    shapes = numpy_shapes(40_000, 8_000, 4)
    for fmt in ("indexed_binary", "mmap_indexed_binary"):
        root = dataset(tmp_path, fmt)
        data = root / "train" / f"img_2_of_3.{fmt}"
        sample = shapes[2][0] * shapes[2][1]
        offsets = np.fromfile(f"{data}.off.idx", dtype="<u8")
        sizes = np.fromfile(f"{data}.sz.idx", dtype="<u8")
        assert offsets.tolist() == [k * sample for k in range(4)] and sizes.tolist() == [sample] * 4
        assert data.stat().st_size == 4 * sample


def test_npz_compressed_and_synthetic(tmp_path: Path) -> None:
    root = dataset(tmp_path, "npz", **{"dataset.compression": "zip", "dataset.compress_ratio": 4.0})
    path = root / "train" / "img_0_of_3.npz"
    with np.load(path) as f:
        x = f["x"]
        assert x.shape[-1] == 4
    assert path.stat().st_size < x.nbytes / 2, "deflated members of 4x-compressible data"
    root = dataset(tmp_path, "synthetic")
    assert (root / "train" / "img_1_of_3.synthetic").read_text() == "1", "DLIO's placeholder holds the file index"


def test_tfrecord_parses_in_tensorflow_and_index_matches(tmp_path: Path) -> None:
    import tensorflow as tf
    shapes = numpy_shapes(40_000, 8_000, 4)
    root = dataset(tmp_path, "tfrecord")
    path = root / "train" / "img_1_of_3.tfrecord"
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "size": tf.io.FixedLenFeature([1], tf.int64)}
    records = list(tf.data.TFRecordDataset(str(path)))
    assert len(records) == 4
    for raw in records:
        example = tf.io.parse_single_example(raw, spec)
        assert len(example["image"].numpy()) == shapes[1][0] * shapes[1][1]
        assert int(example["size"][0]) == shapes[1][0] * shapes[1][1]
    lines = (root / "index" / "train" / "img_1_of_3.tfrecord.idx").read_text().splitlines()
    blob = path.read_bytes()
    offset = 0
    for line in lines:
        start, length = map(int, line.split())
        (record_len,) = np.frombuffer(blob[start : start + 8], dtype="<u8")
        assert start == offset and length == 8 + 4 + int(record_len) + 4
        offset += length
    assert offset == len(blob) and len(lines) == 4


def test_peak_memory_stays_bounded_for_unet3d_sized_samples(tmp_path: Path) -> None:
    """unet3d's samples average 140 MiB; generating them must not hold whole files in memory."""
    args = [DL_DRIVER, "generate", "workload=unet3d_h100", f"++workload.dataset.data_folder={tmp_path / 'd'}",
            "++workload.dataset.num_files_train=8"]
    # A fork inherits its parent's resident-set high-water mark, and this test process may hold TensorFlow: measure
    # from a small intermediate Python process instead.
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True)
    written = sum(p.stat().st_size for p in (tmp_path / "d").rglob("*.npz"))
    assert written > 1000 * MIB
    peak_mib = int(out.stdout) / 1024
    assert peak_mib < 300, f"peak RSS {peak_mib:.0f} MiB while writing {written / MIB:.0f} MiB"


def test_unsupported_encodings_are_clear_errors_that_leave_nothing_behind(tmp_path: Path) -> None:
    for fmt, extra, needle in [
        ("hdf5", {"dataset.compression": "bz2"}, "dataset.compression bz2"),
        ("hdf5", {"dataset.hdf5.chunk_dims": [1, 8]}, "chunk_dims"),
        ("hdf5", {"dataset.hdf5.max_shape": [1, 8, 8]}, "max_shape"),
        ("csv", {"dataset.compression": "lzf"}, "dataset.compression lzf"),
    ]:
        with pytest.raises(dl_driver.FormatError, match=needle) as e:
            dataset(tmp_path / fmt / needle.replace(" ", "_"), fmt, **extra)
        assert "train/img_" in str(e.value), "the message names the file"
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], f"no partial files: {leftovers}"
