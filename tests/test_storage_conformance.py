"""One conformance suite, run against every backend: memory, file, direct (O_DIRECT), S3 on moto and on SeaweedFS,
Azure Blob on Azurite. The servers are real processes on 127.0.0.1 (scripts/servers.sh)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import dl_driver
from dl_driver import StorageError
from dl_driver.storage import Store

AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
MIB = 1024 * 1024


@dataclass
class Backend:
    name: str
    uri: str
    options: dict[str, str] = field(default_factory=dict)

    def open(self, **extra: str | int) -> Store:
        return dl_driver.storage.open(self.uri, **{**self.options, **extra})


def s3_bucket(endpoint: str, name: str) -> None:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=name)


def azure_container(endpoint: str, name: str) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient(account_url=endpoint, credential={"account_name": "devstoreaccount1", "account_key": AZURITE_KEY})
    with contextlib.suppress(ResourceExistsError):
        service.create_container(name)


BACKENDS = ["memory", "file", "direct", "s3-moto", "s3-seaweedfs", "az-azurite"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    run = uuid.uuid4().hex[:12]
    name = request.param
    if name in ("file", "direct"):
        yield Backend(name, f"{name}://{tmp_path_factory.mktemp(name)}")
        return
    if name == "memory":
        yield Backend(name, f"memory://{run}")
        return
    servers = request.getfixturevalue("servers")
    if name.startswith("s3-"):
        endpoint = servers[name.removeprefix("s3-")]
        s3_bucket(endpoint, "dl-driver-tests")
        yield Backend(
            name,
            f"s3://dl-driver-tests/{run}",
            {"endpoint_url": endpoint, "access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"},
        )
        return
    endpoint = servers["azurite"]
    azure_container(endpoint, "dl-driver-tests")
    yield Backend(
        name,
        f"az://dl-driver-tests/{run}",
        {"account_name": "devstoreaccount1", "account_key": AZURITE_KEY, "endpoint": endpoint},
    )


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ between seeds and between 64 KiB blocks."""
    block = bytes((i * 131 + seed) & 0xFF for i in range(65536))
    blocks = (block[k % 251 :] + block[: k % 251] for k in range(size // 65536 + 1))
    return b"".join(blocks)[:size]


def test_readinto_fills_a_large_target_exactly(backend: Backend) -> None:
    # 10 MiB and a tail: local stores read it in parallel parts straight into the target.
    data = payload((10 << 20) + 4097, seed=3)
    store = backend.open()
    store.put("big.bin", data)
    target = bytearray(len(data) - 100)
    store.readinto("big.bin", 100, target)
    assert target == data[100:]


def test_put_get_range_head_list_delete(backend: Backend) -> None:
    store = backend.open()
    data = payload(100_000, 1)
    store.put("dir/obj.bin", data)
    assert store.get("dir/obj.bin") == data
    assert bytes(store.get_range("dir/obj.bin", 10, 5000)) == data[10:5000]
    assert bytes(store.get_range("dir/obj.bin", 99_990, 100_000)) == data[99_990:]
    target = bytearray(4990)
    store.readinto("dir/obj.bin", 10, target)
    assert target == data[10:5000]
    store.readinto("dir/obj.bin", 10, bytearray())  # nothing to fill
    with pytest.raises(dl_driver.StorageError, match=r"obj\.bin"):
        store.readinto("dir/obj.bin", 99_990, bytearray(11))  # past the end
    with pytest.raises(dl_driver.StorageError, match="writable, contiguous"):
        store.readinto("dir/obj.bin", 0, b"read-only")
    assert store.head("dir/obj.bin").size == 100_000
    assert store.exists("dir/obj.bin")
    store.put("dir/sub/z", b"z")
    store.put("a", b"a")
    assert [(o.key, o.size) for o in store.list()] == [("a", 1), ("dir/obj.bin", 100_000), ("dir/sub/z", 1)]
    assert [o.key for o in store.list("dir/sub")] == ["dir/sub/z"]
    store.delete("dir/obj.bin")
    assert not store.exists("dir/obj.bin")
    store.delete("dir/obj.bin")  # idempotent, as on S3
    assert [o.key for o in store.list()] == ["a", "dir/sub/z"]


def test_64_mib_object_in_8_mib_parts_round_trips(backend: Backend) -> None:
    store = backend.open(part_size=8 * MIB, max_in_flight=4)
    data = payload(64 * MIB + 12_345, 7)
    store.put("big/object", data)
    got = store.get("big/object")
    assert len(got) == len(data)
    assert memoryview(got) == memoryview(data)
    assert store.head("big/object").size == len(data)
    assert bytes(store.get_range("big/object", 8 * MIB - 5, 8 * MIB + 5)) == data[8 * MIB - 5 : 8 * MIB + 5]


def test_empty_objects(backend: Backend) -> None:
    store = backend.open()
    store.put("empty", b"")
    assert len(store.get("empty")) == 0
    assert store.head("empty").size == 0
    assert [o.size for o in store.list()] == [0]


def test_overwrite_replaces_the_object(backend: Backend) -> None:
    store = backend.open()
    store.put("k", payload(5000, 1))
    store.put("k", b"short")
    assert store.get("k") == b"short"
    assert [o.size for o in store.list()] == [5]


def test_keys_with_spaces_and_non_ascii(backend: Backend) -> None:
    store = backend.open()
    keys = ["with space/file name.npz", "ünïcødé/数据/ß.bin", "dash-and_underscore.x"]
    for i, key in enumerate(keys):
        store.put(key, f"value {i}".encode())
    for i, key in enumerate(keys):
        assert store.get(key) == f"value {i}".encode()
    assert [o.key for o in store.list()] == sorted(keys)


def test_listing_thousands_of_keys(backend: Backend) -> None:
    store = backend.open()
    keys = [f"many/img_{i:05d}_of_01500.npz" for i in range(1500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    listed = store.list("many")
    assert [o.key for o in listed] == keys
    assert all(o.size == len(o.key) for o in listed)


def test_not_found_is_file_not_found_error(backend: Backend) -> None:
    store = backend.open()
    for call in (lambda: store.get("nope"), lambda: store.head("nope"), lambda: store.get_range("nope", 0, 10)):
        with pytest.raises(FileNotFoundError, match="nope"):
            call()
    assert not store.exists("nope")


def test_buffers_share_memory_without_copies(backend: Backend) -> None:
    import numpy as np

    store = backend.open()
    store.put("b", b"0123456789")
    buf = store.get("b")
    view = memoryview(buf)
    assert view.readonly and bytes(view[2:5]) == b"234"
    first = np.frombuffer(buf, dtype=np.uint8)
    second = np.frombuffer(buf, dtype=np.uint8)
    assert first.__array_interface__["data"][0] == second.__array_interface__["data"][0], "views share one memory"
    assert bytes(first) == b"0123456789"


@pytest.mark.parametrize("server", ["seaweedfs", "azurite"])
def test_wrong_credentials_name_the_uri_and_hide_the_secret(servers: dict[str, str], server: str) -> None:
    secret = "WrongSecret-0123456789abcdef"
    if server == "seaweedfs":
        s3_bucket(servers[server], "dl-driver-tests")
        uri = "s3://dl-driver-tests/creds"
        store = dl_driver.storage.open(
            uri, endpoint_url=servers[server], access_key_id="testing", secret_access_key=secret, max_retries=0
        )
    else:
        azure_container(servers[server], "dl-driver-tests")
        uri = "az://dl-driver-tests/creds"
        secret = base64.b64encode(secret.encode() * 2).decode()  # a well-formed key that is not the account's
        store = dl_driver.storage.open(
            uri, account_name="devstoreaccount1", account_key=secret, endpoint=servers[server], max_retries=0
        )
    with pytest.raises(StorageError) as e:
        store.put("x", b"data")
    assert uri in str(e.value)
    assert secret not in str(e.value)
    assert isinstance(e.value, dl_driver.DlDriverError)


# gs:// has no server test (docs/storage.md: fake-gcs-server rejects object_store's XML-API writes); this checks only
# that a gs:// location sends its requests to the emulator URL of its service-account key (the documented way to reach
# an emulator) and fails as the other backends do.
@pytest.mark.parametrize("scheme", ["s3", "az", "gs"])
def test_unreachable_endpoint_is_a_storage_error(scheme: str) -> None:
    secret = "UnreachableSecret-0123456789"
    if scheme == "s3":
        options = {"endpoint_url": "http://127.0.0.1:9", "access_key_id": "k", "secret_access_key": secret}
    elif scheme == "az":
        options = {"account_name": "devstoreaccount1", "account_key": AZURITE_KEY, "endpoint": "http://127.0.0.1:9/devstoreaccount1"}
        secret = AZURITE_KEY
    else:
        secret = json.dumps({"gcs_base_url": "http://127.0.0.1:9", "disable_oauth": True, "client_email": "",
                             "private_key": "", "private_key_id": ""})
        options = {"service_account_key": secret}
    store = dl_driver.storage.open(f"{scheme}://nowhere-bucket/p", max_retries=0, retry_timeout="1s", **options)
    with pytest.raises(StorageError) as e:
        store.get("x")
    assert f"{scheme}://nowhere-bucket/p/x" in str(e.value)
    assert secret not in str(e.value)
    if scheme == "gs":
        assert "http://127.0.0.1:9/nowhere%2Dbucket/p%2Fx" in str(e.value), "the request went to the key's gcs_base_url"


def test_an_explicit_azure_endpoint_wins_over_the_emulator_flag(servers: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # object_store's emulator mode sends every request to AZURITE_BLOB_STORAGE_URL or 127.0.0.1:10000, whatever
    # endpoint is set; the endpoint is the user's explicit word. Azurite's account and key fill in what is not set.
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    for name in ("AZURITE_BLOB_STORAGE_URL", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY"):
        monkeypatch.delenv(name, raising=False)
    endpoint = servers["azurite"]
    azure_container(endpoint, "dl-driver-tests")
    store = dl_driver.storage.open(f"az://dl-driver-tests/emulator-{os.getpid()}", endpoint=endpoint)
    store.put("x", b"data")
    assert store.get("x") == b"data"
    # A bound socket that does not listen refuses connections: the request must go there, not to the emulator's URL.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", f"http://127.0.0.1:{port}/devstoreaccount1")
        store = dl_driver.storage.open("az://dl-driver-tests/p", max_retries=0, retry_timeout="1s")
        with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
            store.put("x", b"data")


def test_an_endpoint_that_contradicts_the_emulators_url_is_refused_at_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:10000")
    with pytest.raises(StorageError) as e:
        dl_driver.storage.open("az://some-container/p", endpoint="http://127.0.0.1:9/devstoreaccount1")
    message = str(e.value)
    for setting in ("storage_options.endpoint", "http://127.0.0.1:9/devstoreaccount1", "AZURE_STORAGE_USE_EMULATOR",
                    "AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:10000"):
        assert setting in message, f"{setting} missing from: {message}"


def test_bad_locations_and_options() -> None:
    with pytest.raises(StorageError, match="unsupported URI scheme 'ftp://'"):
        dl_driver.storage.open("ftp://host/x")
    with pytest.raises(StorageError, match="part_size"):
        dl_driver.storage.open("memory://x", part_size=1000)
    with pytest.raises(StorageError, match="no_such_option"):
        dl_driver.storage.open("s3://bucket-x/p", no_such_option=1)


def test_direct_and_file_see_the_same_objects(tmp_path: Path) -> None:
    direct = dl_driver.storage.open(f"direct://{tmp_path}")
    data = payload(3 * MIB + 17, 5)
    direct.put("x/y.bin", data)
    assert (tmp_path / "x" / "y.bin").read_bytes() == data
    assert dl_driver.storage.open(str(tmp_path)).get("x/y.bin") == data


def test_read_objects_reads_every_object_once(backend: Backend) -> None:
    store = backend.open()
    sizes = [0, 1, 4095, 4096, 70_000, 1_000_003]
    keys = [f"r/{i}" for i in range(len(sizes))]
    for key, size in zip(keys, sizes, strict=True):
        store.put(key, payload(size, len(key)))
    report = store.read_objects(keys, concurrency=3)
    assert (report["objects"], report["bytes"]) == (len(keys), sum(sizes))
    assert report["seconds"] > 0
    with pytest.raises(FileNotFoundError, match="r/missing"):
        store.read_objects([*keys, "r/missing"], concurrency=2)
