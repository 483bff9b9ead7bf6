"""CIFAR's download under faults and races, for real: processes that start together fetch the archive once, what a
download killed outright leaves is cleared by the next one (and never while another holds the download), and an archive
that would write outside its folder is refused in one line, by tarfile's data filter or, on the Pythons without it, by
resnet_lite.data.cifar's own check (tested here directly, whatever this Python has)."""
import dataclasses
import functools
import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from resnet_lite.data import cifar
from resnet_lite.data.sources import load_dataset
from resnet_lite.errors import UserError

from support.formats import FOLDERS, write_cifar_archive

ARCHIVE = "cifar-10-binary.tar.gz"  # the official name: the leftovers of a killed download are named after it
# One process of a trainer's start: CIFAR-10 from `url`, once the test says go (so that all start at the same moment).
LOAD = """
import dataclasses, pathlib, sys, time
from resnet_lite.data import cifar, load_dataset
url, md5, root, ready, go = sys.argv[1:]
cifar.SOURCES["cifar10"] = dataclasses.replace(cifar.SOURCES["cifar10"], url=url, md5=md5)
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.01)
ds = load_dataset("cifar10", root=root)
print(len(ds.train), len(ds.test))
"""


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        time.sleep(self.server.delay)  # a slow network: every process that would download asks meanwhile
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def archive_server(tmp_path):
    """(url of a tiny official-format CIFAR-10 archive on a real local HTTP server, its md5, its FakeCifar, the
    request paths the server has answered)."""
    served = tmp_path / "served"
    served.mkdir()
    fake, md5 = write_cifar_archive(served / ARCHIVE)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_CountingHandler, directory=str(served)))
    server.requests, server.delay = [], 1.0
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE}", md5, fake, server.requests
    server.shutdown()
    server.server_close()


def _start(url, md5, root, ready, go):
    return subprocess.Popen([sys.executable, "-c", LOAD, url, md5, str(root), str(ready), str(go)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _only_the_dataset_in(root):
    folder = FOLDERS["cifar10", "bin"]
    return sorted(p.name for p in root.iterdir()) == [folder, f"{folder}.stats.json"]


@pytest.mark.slow
def test_processes_starting_together_download_once_and_all_load(tmp_path, archive_server):
    """`sweep --gpus 0,1,2` on a machine without CIFAR: three trainers ask for it at once. One downloads; the others
    wait for its lock, then find its folder (they used to download too, and die renaming onto it)."""
    url, md5, fake, requests = archive_server
    root, go = tmp_path / "data", tmp_path / "go"
    procs = [_start(url, md5, root, tmp_path / f"ready{i}", go) for i in range(3)]
    deadline = time.monotonic() + 240
    while not all((tmp_path / f"ready{i}").exists() for i in range(3)):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            pytest.fail(f"a process did not get ready: {[p.communicate() for p in procs]}")
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert out.split() == [str(len(fake.train_labels)), str(len(fake.test_labels))]
    assert requests == [f"/{ARCHIVE}"]  # fetched once
    assert sum("downloading" in err for _, err in outputs) == 1
    assert sum("waiting for another process's download" in err for _, err in outputs) >= 1
    assert _only_the_dataset_in(root)  # no lock file, .part or .extract-* left


def _leave_a_killed_download(root):
    """The files a download killed outright (SIGKILL, a lost node) leaves in the data root; returns their paths."""
    root.mkdir()
    leftovers = [root / f".{ARCHIVE}.k1ll3d.part", root / ".cifar-100-binary.tar.gz.x7fq2a.part",
                 root / ".extract-abc123"]
    leftovers[0].write_bytes(b"\x1f\x8b" + bytes(4000))  # half an archive
    leftovers[1].write_bytes(bytes(100))
    (leftovers[2] / FOLDERS["cifar10", "bin"]).mkdir(parents=True)  # half an extraction
    (leftovers[2] / FOLDERS["cifar10", "bin"] / "data_batch_1.bin").write_bytes(bytes(3073))
    return leftovers


def test_what_a_killed_download_left_is_removed_by_the_next_one(tmp_path, archive_server, monkeypatch):
    url, md5, fake, _ = archive_server
    monkeypatch.setitem(cifar.SOURCES, "cifar10", dataclasses.replace(cifar.SOURCES["cifar10"], url=url, md5=md5))
    root = tmp_path / "data"
    leftovers = _leave_a_killed_download(root)
    with pytest.warns(UserWarning, match="checksums"):  # the fixture's batches are not the official ones
        ds = load_dataset("cifar10", root=str(root))
    assert len(ds.train) == len(fake.train_labels) and len(ds.test) == len(fake.test_labels)
    assert not any(p.exists() for p in leftovers) and _only_the_dataset_in(root)


@pytest.mark.slow
def test_the_files_of_a_download_another_process_holds_are_kept_until_it_lets_go(tmp_path, archive_server):
    url, md5, fake, requests = archive_server
    root, ready, go = tmp_path / "data", tmp_path / "ready", tmp_path / "go"
    leftovers = _leave_a_killed_download(root)  # here: the live files of the download that holds the lock
    go.touch()
    with cifar._download_lock(root):
        proc = _start(url, md5, root, ready, go)
        err = ""
        while "waiting for another process's download" not in err and proc.poll() is None:
            err += proc.stderr.readline()
        assert "waiting for another process's download" in err, err + proc.communicate()[1]
        time.sleep(0.5)
        assert all(p.exists() for p in leftovers) and requests == []
    out, rest = proc.communicate(timeout=240)
    assert proc.returncode == 0, err + rest
    assert out.split() == [str(len(fake.train_labels)), str(len(fake.test_labels))]
    assert requests == [f"/{ARCHIVE}"] and not any(p.exists() for p in leftovers) and _only_the_dataset_in(root)


@pytest.mark.parametrize("data_filter", [True, False], ids=["data-filter", "own-check"])
def test_an_archive_that_writes_outside_its_folder_is_refused_in_one_line(tmp_path, http_server, monkeypatch,
                                                                          data_filter):
    served = tmp_path / "served"
    served.mkdir()
    fake, _ = write_cifar_archive(served / "good.tar.gz")
    with tarfile.open(served / ARCHIVE, "w:gz") as tar:
        tar.add(fake.folder, arcname=fake.folder.name)
        _add(tar, "../escaped", data=b"beside the extraction folder, in the data root")
    md5 = hashlib.md5((served / ARCHIVE).read_bytes()).hexdigest()
    monkeypatch.setitem(cifar.SOURCES, "cifar10", dataclasses.replace(
        cifar.SOURCES["cifar10"], url=f"{http_server(served)}/{ARCHIVE}", md5=md5))
    if not data_filter:  # a Python before 3.10.12 / 3.11.4
        monkeypatch.delattr(tarfile, "data_filter")
    root = tmp_path / "data"
    with pytest.raises(UserError) as e:
        load_dataset("cifar10", root=str(root))
    assert "is not an archive that can be extracted safely" in str(e.value) and "\n" not in str(e.value)
    assert "'../escaped'" in str(e.value)
    assert list(root.iterdir()) == []  # nothing escaped, nothing half-extracted left


# ------------------------------------------------------------------------- the check for Pythons without data_filter


def _add(tar, name, type=tarfile.REGTYPE, linkname="", data=b""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = type, linkname, len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


BAD = {  # name: the members after an ordinary folder and file
    "absolute path": [("/tmp/resnet_lite_evil", tarfile.REGTYPE, "")],
    "dot-dot path": [("cifar-10-batches-bin/../../evil", tarfile.REGTYPE, "")],
    "symlink out": [("cifar-10-batches-bin/up", tarfile.SYMTYPE, "../..")],
    "absolute symlink": [("cifar-10-batches-bin/passwd", tarfile.SYMTYPE, "/etc/passwd")],
    "hard link out": [("cifar-10-batches-bin/h", tarfile.LNKTYPE, "../outside")],
    "write through a link": [("here", tarfile.SYMTYPE, "."), ("here/up", tarfile.SYMTYPE, "..")],
    "file over a link": [("cifar-10-batches-bin/l", tarfile.SYMTYPE, "data_batch_1.bin"),
                         ("cifar-10-batches-bin/l", tarfile.REGTYPE, "")],
    "character device": [("cifar-10-batches-bin/null", tarfile.CHRTYPE, "")],
    "block device": [("cifar-10-batches-bin/sda", tarfile.BLKTYPE, "")],
    "fifo": [("cifar-10-batches-bin/pipe", tarfile.FIFOTYPE, "")],
}


@pytest.mark.parametrize("case", BAD)
def test_own_check_refuses_each_way_out(tmp_path, case):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "cifar-10-batches-bin", tarfile.DIRTYPE)
        _add(tar, "cifar-10-batches-bin/data_batch_1.bin", data=bytes(3073))
        for name, type, linkname in BAD[case]:
            _add(tar, name, type, linkname)
    (tmp_path / "target").mkdir()
    with tarfile.open(path) as tar, pytest.raises(tarfile.TarError) as e:
        cifar._checked_members(tar, tmp_path / "target")
    assert repr(BAD[case][-1][0]) in str(e.value) and "\n" not in str(e.value)
    assert list((tmp_path / "target").iterdir()) == []


def test_own_check_accepts_the_official_layout_and_extracts_it_whole(tmp_path):
    fake, _ = write_cifar_archive(tmp_path / ARCHIVE)
    target = tmp_path / "target"
    target.mkdir()
    with tarfile.open(tmp_path / ARCHIVE) as tar:
        tar.extractall(target, members=cifar._checked_members(tar, target))
    extracted = target / fake.folder.name
    names = sorted(p.name for p in fake.folder.iterdir())
    assert sorted(p.name for p in extracted.iterdir()) == names and names
    assert all((extracted / n).read_bytes() == (fake.folder / n).read_bytes() for n in names)
