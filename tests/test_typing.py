"""The native module's stub, python/dl_driver/_core.pyi, matches the module: mypy's stubtest finds no difference
(names both ways, parameter names, kinds and defaults, properties, @final), the stub declares a constructor exactly
where the module has one, and every function, method and property returns a value of the type the stub declares."""

from __future__ import annotations

import ast
import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dl_driver
from dl_driver import _core

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "python" / "dl_driver" / "_core.pyi"
ALLOWLIST = Path(__file__).with_name("stubtest_allowlist.txt")


def test_stubtest_finds_no_difference_between_stub_and_module(tmp_path: Path) -> None:
    # The runtime side is the installed module (run from tmp_path, so python/ is not on sys.path); MYPYPATH makes
    # the stub side this checkout's python/dl_driver/_core.pyi.
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "dl_driver._core", "--allowlist", str(ALLOWLIST)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT / "python")},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 module" in result.stdout


def stub_classes() -> dict[str, ast.ClassDef]:
    return {node.name: node for node in ast.parse(STUB.read_text()).body if isinstance(node, ast.ClassDef)}


def test_stub_declares_a_constructor_where_the_module_has_one() -> None:
    # stubtest catches a missing or wrong __new__ of a class with #[new], but not a constructor the stub gives a class
    # without one (its __text_signature__ is None), which PyO3 makes impossible to create from Python.
    for name, node in stub_classes().items():
        runtime = getattr(_core, name)
        if issubclass(runtime, BaseException):
            continue
        declared = {item.name for item in node.body if isinstance(item, ast.FunctionDef)} & {"__new__", "__init__"}
        if runtime.__text_signature__ is None:
            assert not declared, f"{name} has no constructor, the stub declares {declared}"
            with pytest.raises(TypeError, match="cannot create"):
                runtime()
        else:
            assert declared == {"__new__"}, f"{name}{runtime.__text_signature__}: the stub should declare __new__"


def stub_entries() -> dict[str, ast.expr]:
    """The declared type of every module constant and the return type of every function, method and property."""
    entries: dict[str, ast.expr] = {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            entries[node.target.id] = node.annotation
        elif isinstance(node, ast.FunctionDef) and node.returns:
            entries[node.name] = node.returns
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.returns:
                    entries[f"{node.name}.{item.name}"] = item.returns
    return entries


def resolve(annotation: ast.expr, owner: type | None) -> type:
    if isinstance(annotation, ast.Name) and annotation.id == "Self" and owner is not None:
        return owner
    if isinstance(annotation, ast.Name):
        found = getattr(_core, annotation.id, None) or getattr(builtins, annotation.id)
    elif isinstance(annotation, ast.Attribute) and ast.unparse(annotation.value) == "builtins":
        found = getattr(builtins, annotation.attr)
    else:
        raise AssertionError(f"test_typing cannot check the stub's type {ast.unparse(annotation)}")
    assert isinstance(found, type), ast.unparse(annotation)
    return found


def conforms(value: object, annotation: ast.expr, owner: type | None) -> bool:
    """Whether ``value`` has the stub's type ``annotation`` (None, unions, list, dict, tuple and classes)."""
    if isinstance(annotation, ast.Constant) and annotation.value is None:
        return value is None
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return conforms(value, annotation.left, owner) or conforms(value, annotation.right, owner)
    if isinstance(annotation, ast.Subscript):
        args = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        origin = resolve(annotation.value, owner)
        if origin is list and isinstance(value, list):
            return all(conforms(item, args[0], owner) for item in value)
        if origin is dict and isinstance(value, dict):
            return all(conforms(k, args[0], owner) and conforms(v, args[1], owner) for k, v in value.items())
        if origin is tuple and isinstance(value, tuple):
            return len(value) == len(args) and all(conforms(v, a, owner) for v, a in zip(value, args, strict=True))
        return False
    expected = resolve(annotation, owner)
    return expected is object or isinstance(value, expected)


class Checked:
    """Checks values against the stub's declared types and remembers which declarations were checked."""

    def __init__(self) -> None:
        self.entries = stub_entries()
        self.done: set[str] = set()

    def __call__(self, name: str, value: object) -> object:
        owner = getattr(_core, name.partition(".")[0]) if "." in name else None
        annotation = self.entries[name]
        assert conforms(value, annotation, owner), f"{name} gave {value!r}, the stub says {ast.unparse(annotation)}"
        self.done.add(name)
        return value


def test_every_function_method_and_property_returns_the_stub_type(tmp_path: Path) -> None:
    check = Checked()
    check("__version__", _core.__version__)
    check("FREE_FORM_KEYS", _core.FREE_FORM_KEYS)
    check("builtin_workloads", _core.builtin_workloads())
    check("is_secret_key", _core.is_secret_key("secret_access_key"))
    check("json_to_yaml", _core.json_to_yaml('{"a": [1, 2]}'))
    check("yaml_to_json", _core.yaml_to_json("a: [1, 2]\n", "x.yaml"))
    with pytest.raises(dl_driver.ConfigError, match=r"x\.yaml"):
        _core.yaml_to_json("a: [1, 2\n", "x.yaml")

    workload = {
        "framework": "pytorch",
        "workflow": {"generate_data": True, "train": True, "checkpoint": True},
        "dataset": {"format": "npz", "data_folder": str(tmp_path / "data"), "num_files_train": 4,
                    "num_samples_per_file": 2, "record_length_bytes": 4096, "num_subfolders_train": 0},
        "reader": {"data_loader": "pytorch", "batch_size": 2, "read_threads": 1, "not_a_key": 1},
        "train": {"epochs": 1, "computation_time": 0.0},
        "model": {"model_size_bytes": 4096},
        "checkpoint": {"checkpoint_folder": str(tmp_path / "ckpt"), "steps_between_checkpoints": 2},
        "output": {"folder": str(tmp_path / "out")},
    }
    overrides, typed_overrides = ["++workload.train.seed=3"], json.dumps([["train.seed_change_epoch", True]])
    loaded = check("load_config", _core.load_config(json.dumps(workload), "json", overrides, typed_overrides, None, False))
    assert isinstance(loaded, _core.LoadResult) and loaded.warnings and loaded.overrides
    for field in ("config_json", "warnings", "source_name", "overrides"):
        check(f"LoadResult.{field}", getattr(loaded, field))
    config = loaded.config_json
    check("plan_json", _core.plan_json(config, loaded.source_name, 2))
    check("config_yaml", _core.config_yaml(config))
    check("redacted_config_json", _core.redacted_config_json(config))

    check("save_run_config", _core.save_run_config(config, loaded.source_name, overrides, 0))
    assert (tmp_path / "out" / ".hydra" / "hydra.yaml").is_file()
    check("generate", _core.generate(config, threads=1))
    check("run_benchmark", _core.run_benchmark(config, loaded.source_name, [], console=False, plugins=[object()]))
    listed = check("checkpoint_list", _core.checkpoint_list(str(tmp_path / "ckpt")))
    assert isinstance(listed, str)
    names = [c["name"] for c in json.loads(listed)]
    assert names
    check("checkpoint_verify", _core.checkpoint_verify(str(tmp_path / "ckpt"), names[0]))
    check("checkpoint_delete", _core.checkpoint_delete(str(tmp_path / "ckpt"), names[0], {}))

    epoch = check("Batches.__new__", _core.Batches(config, split="train", epoch=1))
    assert isinstance(epoch, _core.Batches)
    check("Batches.__iter__", iter(epoch))
    batch = check("Batches.__next__", next(epoch))
    assert isinstance(batch, _core.PyBatch) and batch.samples and batch.spans
    for field in ("step", "samples", "spans", "data", "bytes_read", "arrays"):
        check(f"PyBatch.{field}", getattr(batch, field))

    state = str(tmp_path / "state")
    writer = check("StateWriter.__new__", _core.StateWriter(state, "s/rank0-a.bin", 0, 3))
    assert isinstance(writer, _core.StateWriter)
    check("StateWriter.write", writer.write(b"0123456789"))
    entry = check("StateWriter.finish", writer.finish())
    assert isinstance(entry, str)
    manifest = {"format": "dl-driver-checkpoint/1", "name": "s", "epoch": 1, "step": 1, "world_size": 1,
                "compression": "zstd", "compression_level": 3, "started": "", "finished": "", "total_bytes": 10,
                "stored_bytes": json.loads(entry)["stored_bytes"], "files": [json.loads(entry)]}
    check("checkpoint_write_manifest", _core.checkpoint_write_manifest(state, json.dumps(manifest)))
    check("checkpoint_read_manifest", _core.checkpoint_read_manifest(state, "s"))
    reader = check("StateReader.__new__", _core.StateReader(state, "s/rank0-a.bin", entry, True))
    assert isinstance(reader, _core.StateReader)
    back = bytearray(12)
    assert check("StateReader.readinto", reader.readinto(memoryview(back)[:4])) == 4
    assert reader.readinto(memoryview(back)[4:]) == 6 and back == b"0123456789\0\0"
    assert reader.readinto(bytearray()) == 0
    with pytest.raises(dl_driver.ConfigError, match="the target must be a writable, contiguous buffer"):
        reader.readinto(b"read-only")
    check("StateReader.finish", reader.finish())

    store = check("Store.__new__", _core.Store("memory://typing", {"max_in_flight": "2"}))
    assert isinstance(store, _core.Store)
    check("Store.uri", store.uri)
    check("Store.put", store.put("a/b.bin", b"0123456789"))
    check("Store.put", store.put("a/c.bin", bytearray(b"x")))
    buffer = check("Store.get", store.get("a/b.bin"))
    assert isinstance(buffer, _core.Buffer)
    check("Store.get_range", store.get_range("a/b.bin", 2, 5))
    check("Store.readinto", store.readinto("a/b.bin", 2, bytearray(3)))
    check("Store.list", store.list("a"))
    info = check("Store.head", store.head("a/b.bin"))
    for field in ("key", "size", "last_modified"):
        check(f"ObjectInfo.{field}", getattr(info, field))
    check("Store.exists", store.exists("a/b.bin"))
    check("Store.read_objects", store.read_objects(["a/b.bin", "a/c.bin"], concurrency=2))
    check("Store.delete", store.delete("a/c.bin"))

    check("Buffer.__len__", len(buffer))
    check("Buffer.__bytes__", bytes(buffer))
    check("Buffer.__eq__", buffer == b"0123456789")
    check("Buffer.__buffer__", memoryview(buffer))

    class Alone:  # a one-rank backend: what dl_driver.distributed's MPI and torch backends provide
        rank, size, node, local_size = 0, 1, None, None

        def ibarrier(self, channel: str) -> object:
            return type("Done", (), {"test": lambda self: True})()

        def allgather(self, value: str) -> list[str]:
            return [value]

    comm = check("Comm.__new__", _core.Comm(Alone(), 5.0))
    for field in ("rank", "size", "node", "local_size"):
        check(f"Comm.{field}", getattr(comm, field))
    check("Comm.barrier", comm.barrier())
    check("Comm.all_gather", comm.all_gather("x"))
    check("Comm.fail", comm.fail("rank 0 failed"))

    assert check.done == set(check.entries), f"not checked: {sorted(set(check.entries) - check.done)}"


def test_errors_and_results_pickle_as_their_public_classes() -> None:
    """Exceptions cross process boundaries (DataLoader workers, multiprocessing) by pickle, found by module + name."""
    import pickle

    for cls in (dl_driver.DlDriverError, dl_driver.ConfigError, dl_driver.StorageError, dl_driver.FormatError,
                dl_driver.CheckpointError):
        assert cls.__module__ == "dl_driver"
        raised = pickle.loads(pickle.dumps(cls("s3://bucket/key: boom")))
        assert type(raised) is cls and str(raised) == "s3://bucket/key: boom"
    assert _core.LoadResult.__module__ == "dl_driver._core"
