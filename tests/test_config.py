"""The Python config API: load_dlio_config, attribute access, validation on assignment, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import dl_driver
from dl_driver import Config, ConfigError, ConfigWarning, DlDriverError, load_dlio_config

GIB = 1024**3


def test_errors_form_a_hierarchy() -> None:
    assert issubclass(ConfigError, DlDriverError)
    assert issubclass(DlDriverError, Exception)


def test_builtin_workloads_ship_in_the_package() -> None:
    names = dl_driver.workloads()
    for name in ("unet3d_h100", "resnet50_h100", "cosmoflow_a100", "bert_v100", "llama_8b_zero3", "llama_1t", "default", "quickstart"):
        assert name in names


def test_load_by_name_gives_documented_values() -> None:
    cfg = load_dlio_config("unet3d_h100")
    assert cfg.framework == "pytorch"
    assert cfg.dataset.format == "npz"
    assert cfg.dataset.num_files_train == 168
    assert cfg.reader.batch_size == 7
    assert cfg.train.computation_time == 0.323
    assert cfg.reader.prefetch_size == 2, "DLIO's code default"
    plan = cfg.plan()
    assert (plan["train"]["files"], plan["train"]["steps_per_epoch"]) == (168, 24)
    assert load_dlio_config("workload=resnet50_h100").plan()["train"]["steps_per_epoch"] == 3202


def test_llama_8b_checkpoint_is_105_gib_at_8_processes() -> None:
    plan = load_dlio_config("llama_8b_zero3").plan(world_size=8)
    size = plan["checkpoint"]["size"]["total_bytes"] / GIB
    assert abs(size - 105) / 105 < 0.01
    assert abs(size - 104.70) < 0.01


def test_overrides_as_strings_and_as_dict() -> None:
    a = load_dlio_config("unet3d_h100", ["++workload.dataset.num_files_train=16", "++workload.reader.read_threads=2"])
    b = load_dlio_config("unet3d_h100", {"dataset.num_files_train": 16, "workload.reader.read_threads": 2})
    assert a == b
    assert a.dataset.num_files_train == 16
    assert a.overrides == ["++workload.dataset.num_files_train=16", "++workload.reader.read_threads=2"]
    with pytest.raises(ConfigError, match=r'dataset\.num_files_train.*"many"'):
        load_dlio_config("unet3d_h100", {"dataset.num_files_train": "many"})


def test_assignment_validates_and_keeps_the_old_value_on_error() -> None:
    cfg = load_dlio_config("bert_v100")
    cfg.checkpoint.steps_between_checkpoints = 100
    assert cfg.checkpoint.steps_between_checkpoints == 100
    assert cfg.plan()["checkpoint"]["every_steps"] == 100
    with pytest.raises(ConfigError, match=r"checkpoint\.steps_between_checkpoints.*'often'"):
        cfg.checkpoint.steps_between_checkpoints = "often"
    with pytest.raises(ConfigError, match=r"reader\.batch_size"):
        cfg.reader.batch_size = 0
    with pytest.raises(ConfigError, match=r"reader\.data_loader.*framework"):
        cfg.reader.data_loader = "pytorch"
    assert cfg.checkpoint.steps_between_checkpoints == 100
    assert cfg.reader.batch_size == 48
    with pytest.raises(ConfigError, match="does not match framework"):
        cfg.framework = "pytorch"
    cfg.update({"framework": "pytorch", "reader.data_loader": "pytorch", "dataset.format": "npz"})
    assert (cfg.framework, cfg.reader.data_loader, cfg.dataset.format) == ("pytorch", "pytorch", "npz")
    cfg.set("workload.train.epochs", 3)
    assert cfg.train.epochs == 3


def test_unknown_keys_on_assignment_and_read() -> None:
    cfg = load_dlio_config("default")
    with pytest.raises(ConfigError, match=r"reader\.read_thread is not a known key \(did you mean read_threads\?\)"):
        cfg.reader.read_thread = 4
    with pytest.raises(AttributeError, match=r"reader\.nope"):
        _ = cfg.reader.nope
    cfg.storage.storage_options.endpoint_url = "http://127.0.0.1:9000"
    assert cfg.storage.storage_options.to_dict() == {"endpoint_url": "http://127.0.0.1:9000"}


def test_time_distributions_are_sections() -> None:
    cfg = load_dlio_config({"train": {"computation_time": 0.5, "computation_time_stdev": 0.1}})
    assert cfg.train.computation_time.to_dict() == {"type": "normal", "mean": 0.5, "stdev": 0.1}
    cfg.train.computation_time.stdev = 0.2
    assert cfg.train.computation_time.stdev == 0.2
    with pytest.raises(ConfigError, match="stdev must be >= 0"):
        cfg.train.computation_time.stdev = -1.0


def test_unknown_keys_warn_and_strict_rejects(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("reader:\n  read_thread: 4\n")
    with pytest.warns(ConfigWarning, match=r"w\.yaml: unknown key reader\.read_thread \(did you mean reader\.read_threads\?\)"):
        cfg = load_dlio_config(path)
    assert cfg.reader.read_threads == 1
    with pytest.raises(ConfigError, match=r"w\.yaml.*--strict.*reader\.read_thread"):
        load_dlio_config(path, strict=True)


def test_yaml_and_dict_round_trips(tmp_path: Path) -> None:
    for name in dl_driver.workloads():
        cfg = load_dlio_config(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(cfg.to_yaml())
        assert load_dlio_config(path, strict=True) == cfg
        assert load_dlio_config(cfg.to_dict(), strict=True) == cfg
        assert load_dlio_config(cfg) == cfg
        assert yaml.safe_load(cfg.to_yaml()) == json.loads(cfg.to_json())


def test_config_dir_and_files(tmp_path: Path) -> None:
    (tmp_path / "workload").mkdir()
    (tmp_path / "workload" / "mine.yaml").write_text("model: {name: mine}\ndataset: {num_files_train: 3}\n")
    cfg = load_dlio_config("mine", config_dir=tmp_path)
    assert cfg.model.name == "mine"
    assert cfg.source_name.endswith("mine.yaml")
    with pytest.raises(ConfigError, match="workload 'mine' not found"):
        load_dlio_config("mine")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  num_files_train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        load_dlio_config(bad)


def test_credentials_never_shown() -> None:
    secret = "s3cr3t-Value"
    cfg = load_dlio_config(
        {"storage": {"storage_type": "s3", "storage_root": "bkt", "storage_options": {"secret_access_key": secret, "region": "us-east-1"}}}
    )
    assert secret not in cfg.to_yaml()
    assert secret not in cfg.to_json()
    assert secret not in repr(cfg.storage.storage_options)
    assert cfg.storage.storage_options.secret_access_key == secret, "the value itself stays usable"
    assert secret in cfg.to_yaml(redact=False)
    with pytest.raises(ConfigError) as e:
        load_dlio_config("default", [f"++workload.storage.storage_options.secret_access_key=[{secret}"])
    assert secret not in str(e.value)


def test_bad_sources_and_overrides() -> None:
    with pytest.raises(ConfigError, match="cannot load a config from int"):
        load_dlio_config(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not plain data"):
        load_dlio_config({"train": {"epochs": object()}})
    with pytest.raises(ConfigError, match="overrides must be"):
        load_dlio_config("default", [1, 2])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="not a valid key path"):
        load_dlio_config("default", {"dataset..x": 1})


values = st.fixed_dictionaries(
    {},
    optional={
        "dataset.num_files_train": st.integers(1, 10**6),
        "dataset.num_samples_per_file": st.integers(1, 5000),
        "dataset.record_length_bytes": st.floats(1, 1e9),
        "reader.batch_size": st.integers(1, 4096),
        "reader.read_threads": st.integers(0, 64),
        "reader.sample_shuffle": st.sampled_from(["off", "seed", "random"]),
        "train.epochs": st.integers(1, 50),
        "train.seed": st.integers(0, 2**31),
        "train.computation_time": st.one_of(
            st.floats(0, 5), st.builds(lambda m, s: {"mean": m, "stdev": s}, st.floats(0, 1), st.floats(0, 1))
        ),
        "dataset.data_folder": st.sampled_from(["data/x", "s3://bkt/p", "az://ctr/p", "direct:///mnt/x", "file:///d"]),
        "metric.au": st.floats(0.01, 1.0),
    },
)


@settings(max_examples=60, deadline=None)
@given(values)
def test_property_resolved_config_round_trips(overrides: dict[str, object]) -> None:
    cfg = load_dlio_config("unet3d_h100", overrides, strict=True)
    again = load_dlio_config(yaml.safe_load(cfg.to_yaml(redact=False)), strict=True)
    assert again == cfg
    assert isinstance(again, Config)


# Written the way DLIO's own repository writes these workloads (older key names, keys no DLIO version reads).
STOCK_UNET3D = """
model:
  name: unet3d
framework: pytorch
workflow:
  generate_data: False
  train: True
  checkpoint: True
dataset:
  data_folder: data/unet3d/
  format: npz
  num_files_train: 168
  num_samples_per_file: 1
  record_length: 146600628
  record_length_stdev: 68341808
  record_length_resize: 2097152
reader:
  data_loader: pytorch
  batch_size: 7
  read_threads: 4
  file_shuffle: seed
  sample_shuffle: seed
train:
  epochs: 5
  computation_time: 0.323
checkpoint:
  checkpoint_folder: checkpoints/unet3d
  checkpoint_after_epoch: 5
  epochs_between_checkpoints: 2
  model_size: 499153191
metric:
  au: 0.90
"""

STOCK_LLAMA_8B = """
model:
  name: llama_8b_zero3
  type: transformer
  num_layers: 32
  model_datatype: fp16
  optimizer_datatype: fp32
  parallelism: {pipeline: 1, tensor: 1, zero_stage: 3}
  transformer: {vocab_size: 128256, hidden_size: 4096, ffn_hidden_size: 14336, num_attention_heads: 32, num_kv_heads: 8}
framework: pytorch
workflow: {generate_data: False, train: False, checkpoint: True}
dataset: {data_folder: data/llama_8b/, format: mmap_indexed_binary, num_files_train: 1, num_samples_per_file: 1048576, record_length_bytes: 2048}
reader: {data_loader: pytorch, batch_size: 16, read_threads: 1, file_shuffle: seed, sample_shuffle: seed}
train: {epochs: 1, computation_time: 5, total_training_steps: 5}
checkpoint:
  checkpoint_folder: checkpoints/llama_8b_zero3
  time_between_checkpoints: 5
  num_checkpoints: 10
  recovery_after_steps: 2
  recovery_rank_shift: True
"""


def test_stock_dlio_yamls_load_unmodified_with_their_command_lines(tmp_path: Path) -> None:
    (tmp_path / "workload").mkdir()
    (tmp_path / "workload" / "unet3d_h100.yaml").write_text(STOCK_UNET3D)
    (tmp_path / "workload" / "llama_8b_zero3.yaml").write_text(STOCK_LLAMA_8B)
    mlperf_args = [
        "++workload.workflow.generate_data=False",
        "++workload.dataset.num_files_train=400",
        "workload.reader.read_threads=8",
        "++workload.dataset.data_folder=/mnt/data/unet3d",
        "++hydra.run.dir=results/unet3d/run",
        "++hydra.output_subdir=dlio_config",
    ]
    cfg = load_dlio_config("unet3d_h100", mlperf_args, config_dir=tmp_path)
    ours = load_dlio_config("unet3d_h100", mlperf_args)
    assert cfg == ours, "DLIO's own file and ours resolve to the same config"
    assert cfg.dataset.record_length_bytes == 146600628
    assert cfg.model.model_size_bytes == 499153191
    assert (cfg.reader.read_threads, cfg.dataset.num_files_train, cfg.output.folder) == (8, 400, "results/unet3d/run")
    with pytest.warns(ConfigWarning) as caught:
        llama = load_dlio_config("llama_8b_zero3", ["++workload.checkpoint.num_checkpoints_write=10"], config_dir=tmp_path)
    assert {str(w.message).split("unknown key ")[1].split(" (")[0] for w in caught} == {"checkpoint.num_checkpoints", "checkpoint.recovery_after_steps"}
    plan = llama.plan(world_size=8)
    assert abs(plan["checkpoint"]["size_gib"] - 104.70) < 0.01


def test_credentials_never_shown_in_overrides_or_assignment_errors() -> None:
    secret = "Sup3rSecretValue"
    cfg = load_dlio_config("default", {"storage.storage_options": {"secret_access_key": secret, "region": "x"}})
    assert all(secret not in o for o in cfg.overrides)
    cfg = load_dlio_config("default", [f"++workload.storage.storage_options={{secret_access_key: {secret}}}"])
    assert all(secret not in o for o in cfg.overrides)
    with pytest.raises(ConfigError) as e:
        cfg.update({"storage.storage_options.master_key": secret, "reader.batch_size": 0})
    assert secret not in str(e.value)
    cfg.storage.storage_options.azure_storage_master_key = secret
    assert secret not in cfg.to_yaml() and secret not in repr(cfg.storage.storage_options)


def test_plan_rejects_impossible_world_sizes() -> None:
    cfg = load_dlio_config("default")
    for bad in (0, 2**64):
        with pytest.raises(ConfigError, match="world size"):
            cfg.plan(world_size=bad)
