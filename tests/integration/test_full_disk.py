"""A full disk under LocalStorage (issue 18, item 3): a clear error, the last good state intact.

Day two's training writes a new model set onto a disk that fills up (``tests/fixtures/
full_disk.py``, in a process of its own). Two real mechanisms:

- ``tmpfs``: a small tmpfs mounted in a private mount namespace (``unshare --mount``, plus
  ``--user --map-root-user`` when not root), filled by a ballast file: writes fail with
  ``ENOSPC``. Skipped, with the reason, where neither root nor user namespaces may mount;
- ``fsize``: the process's ``RLIMIT_FSIZE`` below the size of the new set's manifest: writes
  fail with ``EFBIG``. Always available on Linux.

Either way the error names the file and says to free space, the latest pointer still names day
one's set and it verifies, no temp file is left (on disk or listed), and once space is freed a
rerun trains the same models as on a roomy disk.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import fault_chain as fc
from tests.fixtures import full_disk

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MOUNT_THEN_EXEC = 'mount -t tmpfs -o size="$1"k tmpfs "$2" && shift 2 && exec "$@"'


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """Day one curated and trained (the last good set), day two's drops curated."""
    home = tmp_path_factory.mktemp("full-disk") / "home"
    fc.make_drops(home)
    fc.land(home, fc.HISTORY)
    fc.ingest(home, fc.DAY1)
    fc.train(home, fc.DAY1, "day1run0")
    fc.land(home, *fc.WEEKS)
    fc.ingest(home, fc.DAY2)
    return home


@pytest.fixture(scope="module")
def reference(home, tmp_path_factory) -> dict[str, str]:
    """Day two's model digests, trained on a disk with room."""
    roomy = tmp_path_factory.mktemp("roomy") / "home"
    shutil.copytree(home / "dev", roomy / "dev")
    fc.train(roomy, fc.DAY2, "ref00000")
    return full_disk.digests(roomy)


def tmpfs_prefix(mount_point: Path, size_kib: int) -> tuple[list[str] | None, str]:
    """The command prefix that runs a command with a fresh tmpfs at ``mount_point`` (gone with
    the process), or None and why it cannot be had here."""
    unshare = shutil.which("unshare")
    if not sys.platform.startswith("linux") or unshare is None:
        return None, "no unshare(1): not Linux, or util-linux missing"
    root = os.geteuid() == 0
    spaces = ["--mount"] if root else ["--user", "--map-root-user", "--mount"]
    prefix = [unshare, *spaces, "sh", "-c", MOUNT_THEN_EXEC, "sh", str(size_kib), str(mount_point)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        why = "as root" if root else "in a user namespace (not root)"
        return None, f"mounting a tmpfs {why} is not permitted: {probe.stderr.strip()}"
    return prefix, ""


def folder_kib(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024


@pytest.mark.parametrize("mechanism", ["tmpfs", "fsize"])
def test_a_full_disk_fails_clearly_and_keeps_the_last_good_state(
    home, reference, tmp_path, mechanism
):
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_FSIZE and tmpfs mounts are exercised on Linux only")
    work, out = tmp_path / "work", tmp_path / "out.json"
    work.mkdir()
    prefix: list[str] = []
    if mechanism == "tmpfs":
        # Room for the copy of dev storage and a little more; the ballast takes the rest.
        made, why = tmpfs_prefix(work, folder_kib(home / "dev") + 2048)
        if made is None:
            pytest.skip(why)
        prefix = made
    script = [sys.executable, "-m", "tests.fixtures.full_disk"]
    proc = subprocess.run(
        [*prefix, *script, str(home), str(work), str(out), mechanism],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())

    error = result["error"]
    assert error is not None, "training finished: the disk never filled"
    if mechanism == "tmpfs":
        assert error["errno"] == errno.ENOSPC and "disk full at " in error["message"]
        assert "free space on that file system" in error["message"]
    else:
        assert error["errno"] == errno.EFBIG and "file size limit reached at " in error["message"]
        assert "ulimit -f" in error["message"]
    assert f"{tmp_path}/work/home/dev/models/sales/sets/" in error["message"]  # the file

    assert result["latest_before"] is not None
    assert result["latest_after"] == result["latest_before"]  # day one's set, verified
    assert not result["candidate_after"]
    assert result["temp_files"] == [] and result["listed_temp"] == []
    assert result["rerun"] == reference
    assert result["verified_after_failure"] != reference  # day one's models, not day two's
    failed_at = error["message"].split(" at ", 1)[1].split(":", 1)[0].rsplit("/", 1)[-1]
    print(f"\nFULL DISK {mechanism}: failed writing {failed_at}, rerun {result['rerun_s']}s")
