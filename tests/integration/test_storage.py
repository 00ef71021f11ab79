"""The Storage contract, run against LocalStorage and AzureBlobStorage (on Azurite).

``azure-prefix`` is an AzureBlobStorage with a non-empty ``prefix`` whose container also holds
objects just outside that prefix (``runs/a`` itself, ``runs/ab/...``): none of them may leak
into what it lists or reads.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlops_assets.storage import AzureBlobStorage, LocalStorage, Storage

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

KINDS = [
    pytest.param("local", id="local"),
    pytest.param("azure", marks=pytest.mark.azurite, id="azure"),
    pytest.param("azure-prefix", marks=pytest.mark.azurite, id="azure-prefix"),
]

# Blobs in the azure-prefix container that sit just outside the storage's prefix.
NEIGHBOURS = ["runs/a", "runs/ab/x.csv", "runs/a.csv", "runs/x.csv", "other/y.csv"]


@pytest.fixture(params=KINDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(root=str(tmp_path / "root"))
    factory = request.getfixturevalue("blob_storage_factory")
    if request.param == "azure":
        return factory()
    scoped = factory(prefix="/runs/a/")
    whole = factory(container=scoped.container)
    for name in NEIGHBOURS:
        whole.write_bytes(name, b"outside the prefix")
    return scoped


def names(infos) -> list[str]:
    return [i.name for i in infos]


def test_round_trip(storage: Storage) -> None:
    data = bytes(range(256)) * 41 + b"\x00end"
    written = storage.write_bytes("landing/sales/2026-11-16.parquet", data)
    assert storage.read_bytes("landing/sales/2026-11-16.parquet") == data
    with storage.open_read("landing/sales/2026-11-16.parquet") as f:
        f.seek(-4, os.SEEK_END)
        assert f.read() == b"\x00end"

    assert written.name == "landing/sales/2026-11-16.parquet"
    assert written.size == len(data)
    info = storage.info("landing/sales/2026-11-16.parquet")
    assert info is not None
    assert (info.name, info.size, info.etag) == (written.name, written.size, written.etag)
    assert info.version_key == written.version_key
    [listed] = storage.list("landing/")
    assert (listed.name, listed.size, listed.etag) == (info.name, info.size, info.etag)
    assert storage.exists("landing/sales/2026-11-16.parquet")

    assert storage.write_bytes("empty", b"").size == 0
    assert storage.read_bytes("empty") == b""

    storage.write_text("models/s1/champion.json", '{"model": "ünïcode ✓"}')
    assert storage.read_text("models/s1/champion.json") == '{"model": "ünïcode ✓"}'


def test_list_sorted_with_prefix(storage: Storage) -> None:
    every = [
        "a.csv",
        "a/1.csv",
        "a/10.csv",
        "a/2.csv",
        "a/sub/x.csv",
        "a/sub/y/z.csv",
        "ab/1.csv",
        "b/2.csv",
        "data/sales-2026.csv",
        "data/sales-2027.csv",
        "data/salesman.csv",
    ]
    for name in random.Random(7).sample(every, len(every)):
        storage.write_bytes(name, name.encode())

    assert names(storage.list()) == every
    assert names(storage.list("")) == every
    assert [i.size for i in storage.list()] == [len(n) for n in every]
    assert names(storage.list("a/")) == [
        "a/1.csv",
        "a/10.csv",
        "a/2.csv",
        "a/sub/x.csv",
        "a/sub/y/z.csv",
    ]
    assert names(storage.list("a")) == [n for n in every if n.startswith("a")]
    assert names(storage.list("a/sub/")) == ["a/sub/x.csv", "a/sub/y/z.csv"]
    assert names(storage.list("a/sub/y/")) == ["a/sub/y/z.csv"]
    assert names(storage.list("a/sub/y/z.csv")) == ["a/sub/y/z.csv"]
    # A prefix that ends inside a file name matches as a plain string.
    assert names(storage.list("a/1")) == ["a/1.csv", "a/10.csv"]
    assert names(storage.list("data/sales-")) == ["data/sales-2026.csv", "data/sales-2027.csv"]
    assert names(storage.list("data/sales")) == [n for n in every if n.startswith("data/")]
    assert storage.list("a/su") == storage.list("a/sub/")
    assert storage.list("nothing/") == []
    assert storage.list("a/sub/y/z.csv/") == []


def test_etag_changes_on_every_overwrite_even_same_size(storage: Storage) -> None:
    first = storage.write_bytes("m/champion.json", b"version-A")
    second = storage.write_bytes("m/champion.json", b"version-B")
    assert second.size == first.size
    assert second.etag != first.etag
    assert storage.info("m/champion.json").etag == second.etag
    # Rewriting the old bytes is still a new version (no A-B-A), however fast it happens.
    etags = [first.etag, second.etag]
    for i in range(40):
        etags.append(
            storage.write_bytes("m/champion.json", b"version-" + b"AB"[i % 2 : i % 2 + 1]).etag
        )
    assert len(set(etags)) == len(etags)
    assert storage.list("m/")[0].etag == etags[-1]


def test_last_modified_is_tz_aware_and_recent(storage: Storage) -> None:
    before = datetime.now(UTC) - timedelta(minutes=5)  # room for clock skew and 1 s resolution
    written = storage.write_bytes("x/y.bin", b"1")
    for info in (written, storage.info("x/y.bin"), storage.list("x/")[0]):
        assert info.last_modified.tzinfo is not None
        assert info.last_modified.utcoffset() == timedelta(0)
        assert before < info.last_modified < datetime.now(UTC) + timedelta(minutes=5)
    later = storage.write_bytes("x/y.bin", b"2")
    assert later.last_modified >= written.last_modified


def test_overwrite_false_refuses_an_existing_object(storage: Storage) -> None:
    original = storage.write_bytes("m/champion.json", b'{"v": 1}', overwrite=False)
    with pytest.raises(FileExistsError) as err:
        storage.write_bytes("m/champion.json", b'{"v": 2}', overwrite=False)
    assert storage.uri("m/champion.json") in str(err.value)
    assert storage.read_bytes("m/champion.json") == b'{"v": 1}'
    assert storage.info("m/champion.json").etag == original.etag
    assert storage.list() == [storage.info("m/champion.json")]


def test_overwrite_false_has_one_winner_under_a_race(storage: Storage) -> None:
    barrier = threading.Barrier(8)

    def attempt(i: int) -> bool:
        barrier.wait()
        try:
            storage.write_bytes("lock/owner", f"writer-{i}".encode(), overwrite=False)
            return True
        except FileExistsError:
            return False

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(attempt, range(8)))
    assert won.count(True) == 1
    assert storage.read_text("lock/owner") == f"writer-{won.index(True)}"
    assert names(storage.list("lock/")) == ["lock/owner"]


def test_a_streamed_write_appears_whole_when_its_block_ends(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``open_write``: nothing of the new bytes is visible until the block ends (the previous
    version stays readable meanwhile); then the object is all of them, in order. Azure blocks
    of 1 KiB make the 9,178 bytes written here nine staged blocks."""
    import mlops_assets.storage.azure as azure_storage

    monkeypatch.setattr(azure_storage, "BLOCK_BYTES", 1024)
    before = storage.write_bytes("out/predictions.parquet", b"previous output")
    parts = [bytes([i]) * (700 + i) for i in range(13)]
    with storage.open_write("out/predictions.parquet") as f:
        for part in parts:
            assert f.write(memoryview(part)) == len(part)
            assert storage.read_bytes("out/predictions.parquet") == b"previous output"
        assert storage.info("out/predictions.parquet").etag == before.etag
        assert names(storage.list("out/")) == ["out/predictions.parquet"]
    assert storage.read_bytes("out/predictions.parquet") == b"".join(parts)
    assert storage.info("out/predictions.parquet").size == sum(map(len, parts))
    if isinstance(storage, AzureBlobStorage):
        blob = storage._container().get_blob_client(storage._full("out/predictions.parquet"))  # noqa: SLF001
        committed, uncommitted = blob.get_block_list("all")
        assert [b.size for b in committed] == [1024] * 8 + [9178 - 8 * 1024] and not uncommitted
    with storage.open_write("out/empty") as f:
        pass
    assert storage.read_bytes("out/empty") == b""


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
def test_a_large_local_write_has_its_writeback_started_as_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LocalStorage asks the kernel to start writing each ``WRITEBACK_BYTES`` it was given
    while the write is under way (so its closing fsync waits for the last part only), and to
    free the cached pages of the range before: the new ranges follow each other from byte 0,
    each of at least that size, and each advice covers the new range and the one before it,
    all before the block ends; a write below that size advises nothing, and a single large
    one is advised once (its pages are not freed); the bytes are unchanged."""
    import mlops_assets.storage.local as local_storage

    advised: list[tuple[int, int, int]] = []

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length, advice))
        os.posix_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(local_storage, "WRITEBACK_BYTES", 1024)
    monkeypatch.setattr(local_storage, "_FADVISE", record)
    storage = LocalStorage(root=str(tmp_path / "root"))
    parts = [bytes([i]) * (700 + i) for i in range(13)]
    with storage.open_write("out/predictions.parquet") as f:
        for part in parts:
            f.write(part)
        during = list(advised)
    assert during == advised and len(advised) >= 5
    assert {a for _o, _n, a in advised} == {os.POSIX_FADV_DONTNEED}
    ends = [0] + [offset + length for offset, length, _a in advised]
    for i, (offset, _n, _a) in enumerate(advised):
        assert ends[i + 1] - ends[i] >= 1024  # the new range: from the last advice's end
        assert offset == ends[max(i - 1, 0)]  # ... and the range before it
    # What is left for the closing fsync: less than one range and the last write.
    assert 9178 - ends[-1] < 1024 + 712
    assert storage.read_bytes("out/predictions.parquet") == b"".join(parts)
    advised.clear()
    storage.write_bytes("out/small", b"x" * 1000)
    assert advised == []
    storage.write_bytes("out/whole", b"x" * 5000)
    assert [(o, n) for o, n, _a in advised] == [(0, 5000)]


def test_a_streamed_write_that_fails_leaves_the_previous_version(storage: Storage) -> None:
    before = storage.write_bytes("out/predictions.parquet", b"previous output")
    with pytest.raises(RuntimeError, match="scoring stopped"):
        with storage.open_write("out/predictions.parquet") as f:
            f.write(b"half of the new output")
            raise RuntimeError("scoring stopped")
    assert storage.read_bytes("out/predictions.parquet") == b"previous output"
    assert storage.info("out/predictions.parquet").etag == before.etag
    assert names(storage.list("out/")) == ["out/predictions.parquet"]
    with pytest.raises(RuntimeError):
        with storage.open_write("out/never") as f:
            f.write(b"x")
            raise RuntimeError("stopped")
    assert not storage.exists("out/never")


def test_a_streamed_write_with_overwrite_false_refuses_an_existing_object(
    storage: Storage,
) -> None:
    storage.write_bytes("lock/owner", b"first", overwrite=False)
    with pytest.raises(FileExistsError) as err:
        with storage.open_write("lock/owner", overwrite=False) as f:
            f.write(b"second")
    assert storage.uri("lock/owner") in str(err.value)
    assert storage.read_bytes("lock/owner") == b"first"
    # An object created while the write was under way wins; the streamed write is refused.
    with pytest.raises(FileExistsError):
        with storage.open_write("lock/late", overwrite=False) as f:
            f.write(b"streamed")
            storage.write_bytes("lock/late", b"created meanwhile")
    assert storage.read_bytes("lock/late") == b"created meanwhile"


def test_move_preserves_bytes_and_removes_source(storage: Storage) -> None:
    data = os.urandom(70_000)
    storage.write_bytes("landing/f.parquet", data)
    storage.write_bytes("quarantine/f.parquet", b"an older, other version")
    moved = storage.move("landing/f.parquet", "quarantine/f.parquet")
    assert moved.name == "quarantine/f.parquet"
    assert moved.size == len(data)
    assert storage.read_bytes("quarantine/f.parquet") == data
    assert not storage.exists("landing/f.parquet")
    assert names(storage.list()) == ["quarantine/f.parquet"]

    storage.move("quarantine/f.parquet", "curated/new/deep/f.parquet")
    assert storage.read_bytes("curated/new/deep/f.parquet") == data
    assert names(storage.list()) == ["curated/new/deep/f.parquet"]

    # Moving onto itself keeps the object; moving a missing one says which.
    assert storage.move("curated/new/deep/f.parquet", "curated/new/deep/f.parquet").size == len(
        data
    )
    assert storage.read_bytes("curated/new/deep/f.parquet") == data
    with pytest.raises(FileNotFoundError) as err:
        storage.move("landing/f.parquet", "elsewhere/f.parquet")
    assert storage.uri("landing/f.parquet") in str(err.value)
    assert not storage.exists("elsewhere/f.parquet")


def test_moved_object_is_a_new_version_for_pollers(storage: Storage) -> None:
    old = storage.write_bytes("landing/f.csv", b"one")
    storage.write_bytes("staging/f.csv", b"two")
    moved = storage.move("staging/f.csv", "landing/f.csv")
    assert moved.etag != old.etag
    assert moved.last_modified >= old.last_modified


def test_a_sub_storage_is_rooted_at_its_folder(storage: Storage) -> None:
    sub = storage.sub("bundles/x")
    sub.write_bytes("models/a/pack-000.bin", b"abc")
    assert storage.read_bytes("bundles/x/models/a/pack-000.bin") == b"abc"
    assert [b.name for b in sub.list("models/")] == ["models/a/pack-000.bin"]
    assert [b.name for b in sub.sub("models").list()] == ["a/pack-000.bin"]
    assert sub.config()["kind"] == storage.config()["kind"]
    with pytest.raises(ValueError):
        storage.sub("../escape")


def test_delete(storage: Storage) -> None:
    storage.delete("never/existed.csv")
    storage.write_bytes("a/b/c.csv", b"x")
    storage.delete("a/b")  # a "folder" is not an object: nothing happens
    storage.delete("a")
    assert storage.exists("a/b/c.csv")
    storage.delete("a/b/c.csv")
    storage.delete("a/b/c.csv")
    assert not storage.exists("a/b/c.csv")
    assert storage.info("a/b/c.csv") is None
    assert storage.list() == []


def test_read_of_a_missing_name_raises_file_not_found_naming_the_uri(storage: Storage) -> None:
    uri = storage.uri("landing/missing.parquet")
    for read in (storage.read_bytes, storage.open_read, storage.read_text):
        with pytest.raises(FileNotFoundError) as err:
            read("landing/missing.parquet")
        assert uri in str(err.value)
    assert storage.info("landing/missing.parquet") is None
    assert not storage.exists("landing/missing.parquet")


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "a/..", "/etc/passwd", "", ".", "a/"])
def test_invalid_names_are_refused(storage: Storage, bad: str) -> None:
    calls = [
        lambda: storage.write_bytes(bad, b"x"),
        lambda: storage.write_bytes(bad, b"x", overwrite=False),
        lambda: storage.read_bytes(bad),
        lambda: storage.open_read(bad),
        lambda: storage.info(bad),
        lambda: storage.exists(bad),
        lambda: storage.delete(bad),
        lambda: storage.uri(bad),
        lambda: storage.move("ok", bad),
    ]
    storage.write_bytes("ok", b"x")
    for call in calls:
        with pytest.raises(ValueError, match="invalid storage name"):
            call()
    assert names(storage.list()) == ["ok"]


@pytest.mark.parametrize("bad", ["../", "../x", "a/../", "/abs", "/", "./a", "a//b"])
def test_invalid_list_prefixes_are_refused(storage: Storage, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid storage prefix"):
        storage.list(bad)


# On Azurite 2,000 uploads take several seconds (one Node.js thread serves them), so only the
# prefixed variant, which also checks the name mapping on every entry, runs there.
@pytest.mark.parametrize(
    "storage",
    [
        pytest.param("local", id="local"),
        pytest.param(
            "azure-prefix", marks=[pytest.mark.azurite, pytest.mark.slow], id="azure-prefix"
        ),
    ],
    indirect=True,
)
def test_listing_2000_objects(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    if isinstance(storage, AzureBlobStorage):
        # Small pages, so that the listing has to follow continuation tokens.
        client = storage._container()  # noqa: SLF001 - the SDK client, to shrink its pages
        monkeypatch.setattr(
            client, "list_blobs", functools.partial(client.list_blobs, results_per_page=300)
        )
    every = [f"many/{i}.bin" for i in range(2000)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: storage.write_bytes(n, n.encode()), every))
    storage.write_bytes("many-not/x.bin", b"x")

    listed = storage.list("many/")
    assert names(listed) == sorted(every)
    assert len({i.version_key for i in listed}) == 2000
    assert names(storage.list("many/1")) == sorted(n for n in every if n.startswith("many/1"))
    assert len(storage.list()) == 2001


# --- LocalStorage only -----------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(root=str(tmp_path / "root"))


def _temp_files(root: str) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.name.startswith(".tmp-")]


def _killed_write(local: LocalStorage, name: str) -> None:
    """A process killed after writing the new bytes of ``name`` but before committing them."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from mlops_assets.storage import LocalStorage

        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        LocalStorage(root={local.root!r}).write_bytes({name!r}, b"x" * 100_000)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == -signal.SIGKILL


def test_local_crash_mid_write_keeps_the_previous_version(local: LocalStorage) -> None:
    """A process killed after writing the new bytes but before committing them."""
    local.write_bytes("models/s1/champion.json", b'{"v": 1}')
    before = local.info("models/s1/champion.json")
    _killed_write(local, "models/s1/champion.json")

    assert len(_temp_files(local.root)) == 1  # the crash left its partial write behind ...
    assert local.read_bytes("models/s1/champion.json") == b'{"v": 1}'  # ... invisibly
    assert local.list() == [before]
    assert local.info("models/s1/champion.json") == before
    local.write_bytes("models/s1/champion.json", b'{"v": 2}')
    assert names(local.list()) == ["models/s1/champion.json"]
    assert local.read_bytes("models/s1/champion.json") == b'{"v": 2}'


def test_local_next_writer_removes_stale_temp_files_of_killed_writes(local: LocalStorage) -> None:
    """Temporary files of writes killed long ago go with the next write in their folder;
    a young one (a write perhaps still under way) stays."""
    _killed_write(local, "inbox/a.parquet")
    (stale,) = _temp_files(local.root)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    young = stale.parent / ".tmp-still-writing"
    young.write_bytes(b"y")
    elsewhere = Path(local.root) / "other" / ".tmp-old"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"z")
    os.utime(elsewhere, (old, old))
    local.write_bytes("inbox/b.parquet", b"b")
    assert sorted(_temp_files(local.root)) == sorted([young, elsewhere])
    assert names(local.list()) == ["inbox/b.parquet"]


def test_local_failed_write_leaves_previous_version_and_no_temp_file(
    local: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.write_bytes("m/model.pkl", b"old model")
    before = local.info("m/model.pkl")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    for overwrite in (True, False):
        with pytest.raises(OSError, match="No space left"):
            local.write_bytes("m/model.pkl", b"new model, half written", overwrite=overwrite)
        with pytest.raises(OSError, match="No space left"):
            local.write_bytes("m/other.pkl", b"new", overwrite=overwrite)
    monkeypatch.undo()

    assert local.read_bytes("m/model.pkl") == b"old model"
    assert local.list() == [before]
    assert _temp_files(local.root) == []


def test_local_objects_get_the_usual_file_mode(local: LocalStorage) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    local.write_bytes("a/b.txt", b"x")
    local.write_bytes("a/c.txt", b"x", overwrite=False)
    for name in ("a/b.txt", "a/c.txt"):
        mode = stat.S_IMODE(local.local_path(name).stat().st_mode)
        assert mode == 0o666 & ~mask, oct(mode)


def test_local_temp_file_names_are_reserved(local: LocalStorage) -> None:
    with pytest.raises(ValueError, match="invalid storage name"):
        local.write_bytes("a/.tmp-x", b"x")


def test_local_uri_is_a_file_uri(local: LocalStorage) -> None:
    assert local.uri("a/b c.csv").startswith("file:///")
    assert local.uri("a/b c.csv").endswith("/root/a/b%20c.csv")


# --- AzureBlobStorage only -------------------------------------------------------------------


@pytest.mark.azurite
def test_azure_prefix_maps_names_both_ways(blob_storage_factory) -> None:
    scoped = blob_storage_factory(prefix="tenant/x")
    whole = blob_storage_factory(container=scoped.container)
    whole.write_bytes("tenant/xy/leak.csv", b"no")
    whole.write_bytes("tenant/x", b"no")
    scoped.write_bytes("a/b.csv", b"yes")

    assert names(whole.list()) == ["tenant/x", "tenant/x/a/b.csv", "tenant/xy/leak.csv"]
    assert names(scoped.list()) == ["a/b.csv"]
    assert names(scoped.list("a")) == ["a/b.csv"]
    assert scoped.list("y") == []
    assert scoped.info("a/b.csv").etag == whole.info("tenant/x/a/b.csv").etag
    assert scoped.uri("a/b.csv").endswith(f"/{scoped.container}/tenant/x/a/b.csv")
    assert scoped.uri("a/b.csv").startswith(scoped.account_url)
    scoped.move("a/b.csv", "c.csv")
    assert names(whole.list("tenant/x/")) == ["tenant/x/c.csv"]


@pytest.mark.azurite
def test_azure_uncommitted_blocks_are_invisible(blob_storage: AzureBlobStorage) -> None:
    """A block upload cut off before its commit leaves the previous version."""
    before = blob_storage.write_bytes("m/model.pkl", b"old model")
    blob = blob_storage._container().get_blob_client("m/model.pkl")  # noqa: SLF001 - raw SDK
    blob.stage_block("YmxvY2stMDAwMQ==", b"new model, half uploaded")
    assert blob_storage.read_bytes("m/model.pkl") == b"old model"
    assert [(i.name, i.etag) for i in blob_storage.list()] == [("m/model.pkl", before.etag)]
    assert blob_storage.info("m/model.pkl").etag == before.etag


@pytest.mark.azurite
def test_azurite_fixture_endpoints(azurite) -> None:
    assert azurite.blob_url.startswith("http://127.0.0.1:")
    assert azurite.queue_url.startswith("http://127.0.0.1:")
    assert azurite.blob_port != azurite.queue_port
    assert "AccountName=devstoreaccount1;" in azurite.connection_string
    assert f"QueueEndpoint={azurite.queue_url};" in azurite.connection_string
    assert azurite.process.poll() is None


def _parquet_of_row_groups(rows: int, row_group_size: int) -> bytes:
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    table = pa.table({c: rng.normal(size=rows) for c in ("a", "b", "c", "d")})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size, compression="none")
    return buf.getvalue()


@pytest.mark.azurite
def test_azure_parquet_reads_fetch_only_the_wanted_bytes(blob_storage: AzureBlobStorage) -> None:
    """One column, or one row group, of a multi-row-group Parquet blob through ``open_read``:
    ranged requests for the footer and those column chunks, far fewer bytes than the blob."""
    import io

    import pyarrow.parquet as pq

    data = _parquet_of_row_groups(200_000, 25_000)  # 8 row groups, 4 columns, ~6.4 MB
    size = blob_storage.write_bytes("curated/sales/part-000.parquet", data).size
    whole = pq.read_table(io.BytesIO(data))

    with blob_storage.open_read("curated/sales/part-000.parquet") as f:
        pf = pq.ParquetFile(f)
        assert pf.metadata.num_row_groups == 8
        got = pf.read_row_group(3, columns=["b"])
        assert got["b"].equals(whole["b"].slice(3 * 25_000, 25_000))
        assert 0 < f.raw.bytes_read < size / 16  # one column chunk of 32, plus the footer
        assert f.raw.requests <= 4

    with blob_storage.open_read("curated/sales/part-000.parquet") as f:
        column = pq.read_table(f, columns=["c"])
        assert column["c"].equals(whole["c"])
        assert f.raw.bytes_read < size / 3  # one column of four

    with blob_storage.open_read("curated/sales/part-000.parquet") as f:
        assert f.read() == data and f.raw.bytes_read == size


@pytest.mark.azurite
def test_azure_open_read_refuses_a_blob_replaced_while_read(blob_storage: AzureBlobStorage) -> None:
    blob_storage.write_bytes("drops/a.bin", b"x" * 600_000)
    with blob_storage.open_read("drops/a.bin") as f:
        assert f.read(10) == b"x" * 10
        blob_storage.write_bytes("drops/a.bin", b"y" * 600_000)
        f.seek(400_000)  # past the read-ahead buffer: a new ranged request
        with pytest.raises(OSError, match="changed while being read"):
            f.read(10)
    with pytest.raises(FileNotFoundError):
        blob_storage.open_read("drops/missing.bin")


def test_a_content_type_is_kept_where_the_store_has_one(storage: Storage) -> None:
    """A report page is written as text/html, so a browser opening its blob shows it rather
    than downloading it; files keep no type and the bytes are the same either way."""
    info = storage.write_bytes("reports/page.html", b"<p>hi</p>", content_type="text/html")
    assert storage.read_bytes("reports/page.html") == b"<p>hi</p>" and info.size == 9
    if isinstance(storage, AzureBlobStorage):
        props = storage._container().get_blob_client(storage._full("reports/page.html"))  # noqa: SLF001
        assert props.get_blob_properties().content_settings.content_type == "text/html"
