"""Write one 16x16 PNG per class of resnet_lite's synthetic dataset, taken from its test split (the images the README's
CPU try-out evaluates on), into FOLDER, so that `python -m resnet_lite.predict runs/try FOLDER` has image files to
read. The name of each file is its true class. Written on demand rather than kept in the repository: they always
match the installed version's synthetic data.

    python examples/write_images.py runs/try/images
"""
import sys
from pathlib import Path

from PIL import Image

from resnet_lite.data import load_dataset

if len(sys.argv) != 2:
    sys.exit("usage: python examples/write_images.py FOLDER")
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
ds = load_dataset("synthetic", synthetic_train=10, synthetic_test=256, image_size=16)
for label, name in enumerate(ds.classes):
    first = int((ds.test.labels == label).nonzero()[0])
    Image.fromarray(ds.test.images[first].permute(1, 2, 0).numpy()).save(out / f"{name}.png")
print(f"wrote {len(ds.classes)} images to {out}")
