"""Shared test fixtures: tiny datasets written in the official on-disk formats, for any test to reuse.

The writers live in support/formats.py: write_cifar_bin, write_cifar_py, write_cifar_archive, write_imagefolder,
FakeCifar, FOLDERS.

Fixtures: cifar10_bin, cifar10_py (FakeCifar under tmp_path/"data"); imagefolder (ImageTree: `.root` of a written
tree, `.files` as write_imagefolder returns); http_server (serve a directory on 127.0.0.1: `http_server(dir) -> base
URL`); unreachable_url (an http URL on a closed 127.0.0.1 port); jpeg_tarball (path of the real CIFAR-10-JPEG archive,
or skip); cifar10_jpeg_tree (that archive extracted once per session; the ImageFolder root); slurm_cluster (a real
one-node Slurm, support/slurm.py, up for the session and torn down after it, or skip saying why there is none);
tiny_run (one real training run per session, support/tiny_run.py); hub_offline (the datasets library without network).
"""
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import REPO
from support import tiny_run as tiny_run_settings
from support.formats import (  # noqa: F401
    CIFAR10_CLASSES,
    FOLDERS,
    FakeCifar,
    write_cifar_archive,
    write_cifar_bin,
    write_cifar_py,
    write_imagefolder,
)

# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def cifar10_bin(tmp_path):
    return write_cifar_bin(tmp_path / "data")


@pytest.fixture
def cifar10_py(tmp_path):
    return write_cifar_py(tmp_path / "data")


@dataclass
class ImageTree:
    root: Path
    files: dict  # split -> [(path, label, pixels)], as write_imagefolder returns


@pytest.fixture
def imagefolder(tmp_path):
    root = tmp_path / "images"
    return ImageTree(root, write_imagefolder(root))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """`http_server(directory) -> "http://127.0.0.1:PORT"`: a real HTTP server in a thread, closed after the test."""
    servers = []

    def serve(directory):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 functools.partial(_QuietHandler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def unreachable_url():
    with socket.socket() as s:  # a port that was free a moment ago and is closed now: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz"


@pytest.fixture(scope="session")
def jpeg_tarball():
    candidates = [os.environ.get("RESNET_LITE_JPEG_TARBALL"), REPO.parent / "shared/data/cifar10-jpeg.tar.gz"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.skip("real CIFAR-10-JPEG archive absent "
                "(set RESNET_LITE_JPEG_TARBALL or place ../shared/data/cifar10-jpeg.tar.gz)")


@pytest.fixture(scope="session")
def cifar10_jpeg_tree(jpeg_tarball, tmp_path_factory):
    """The real archive extracted once per test session; returns the ImageFolder root (with train/ and test/)."""
    target = tmp_path_factory.mktemp("cifar10_jpeg")
    if shutil.which("tar"):  # GNU tar: ~2 s for the 60k files, where tarfile's extraction filter takes ~50 s
        subprocess.run(["tar", "-xzf", str(jpeg_tarball), "-C", str(target)], check=True)
    else:
        with tarfile.open(jpeg_tarball) as tar:
            tar.extractall(target, filter="data")
    (root,) = [p.parent for p in target.glob("*/train")]
    return root


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    from support.slurm import Cluster, SlurmUnavailable

    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()  # stops what it started before raising
    except SlurmUnavailable as e:
        pytest.skip(f"no Slurm cluster here: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()  # also after failed tests: no controller or job outlives the session


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real training run (support/tiny_run.py), made once per test session."""
    from resnet_lite.train import main as train_main

    run = tmp_path_factory.getbasetemp() / "tiny_run"
    if not (run / "summary.json").is_file():  # the session's first user trains it
        train_main([*tiny_run_settings.SETTINGS, "--output-dir", str(run)])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_samples"] == tiny_run_settings.TEST_IMAGES
    return run


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """The Hub tests: no network, and the datasets library's own cache in the test's folder."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture
def no_wandb(monkeypatch, tmp_path):
    """W&B off for a test's runs, and anything wandb writes regardless kept in the test's folder, not the checkout."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-default"))
    monkeypatch.setenv("WANDB_SILENT", "true")
