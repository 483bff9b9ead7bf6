"""predict: the in-process checks (nothing trained, no process started). The rest, and what the file tests and why:
tests/integration/test_predict.py."""

import pytest
from PIL import Image

from resnet_lite.data.sources import DataConfig, load_data
from resnet_lite.predict import find_images, main

from support.tiny_run import TEST_IMAGES


@pytest.fixture(scope="module")
def test_split():
    return load_data(DataConfig("synthetic", synthetic_train=512, synthetic_test=TEST_IMAGES, image_size=8)).test


def test_find_images_keeps_the_order_given_and_sorts_directories(tmp_path):
    for name in ("b/2.png", "b/1.png", "a.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    files, problems = find_images([tmp_path / "b", tmp_path / "a.png"])
    assert files == [tmp_path / "b" / "1.png", tmp_path / "b" / "2.png", tmp_path / "a.png"] and problems == []


def test_tta_needs_an_explicit_level_and_never_takes_the_run(capsys):
    """`predict --tta RUN IMAGES` used to take RUN as the level (nargs='?'): now it is a one-line error naming the
    fix."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--tta", "runs/x", "photo.png"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: argument --tta: a level is required, not 'runs/x': write `--tta 1 runs/x` "
                           "(0 none, 1 flip, 2 flip + 1-pixel translate); see `python -m resnet_lite.predict --help`")
