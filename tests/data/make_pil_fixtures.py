"""Makes the decoded-pixel fixtures of tests/interop.rs with PIL (Pillow 13.0.0, which bundles
libjpeg-turbo 3.2.0; PyTorch users' loaders decode JPEGs the same way):

    python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow==13.0.0
    /tmp/pil/bin/python tests/data/make_pil_fixtures.py   # from the repository root

pil/cifar.bin: PIL's RGB pixels (HWC, uint8) of the first image of each class of the test split
and of the train split of ../shared/data/cifar10-jpeg (20 images of 32x32, test classes first).
pil/<name>.jpg: the first test airplane re-encoded by PIL in other layouts (4:4:4, 4:2:2, 4:2:0
at an odd size, grayscale, restart markers, quality 95, progressive), and pil/<name>.rgb their
pixels as PIL decodes them.
"""
import os

from PIL import Image

root = os.path.join("..", "shared", "data", "cifar10-jpeg")
out = os.path.join("tests", "data", "pil")
os.makedirs(out, exist_ok=True)
classes = sorted(os.listdir(os.path.join(root, "test")))
buf = bytearray()
for split in ["test", "train"]:
    for c in classes:
        first = sorted(os.listdir(os.path.join(root, split, c)))[0]
        buf += Image.open(os.path.join(root, split, c, first)).convert("RGB").tobytes()
open(os.path.join(out, "cifar.bin"), "wb").write(buf)

src = Image.open(os.path.join(root, "test", classes[0], "0000.jpg")).convert("RGB")
variants = {
    "s444": (src, dict(subsampling=0)),
    "s422": (src, dict(subsampling=1)),
    "s420_33x17": (src.resize((33, 17), Image.BICUBIC), dict(subsampling=2)),
    "gray": (src.convert("L"), dict()),
    "restart": (src, dict(subsampling=2, restart_marker_blocks=1)),
    "q95": (src, dict(subsampling=2, quality=95)),
    "progressive": (src, dict(progressive=True)),
}
for name, (im, kw) in variants.items():
    p = os.path.join(out, name + ".jpg")
    im.save(p, "JPEG", quality=kw.pop("quality", 75), **kw)
    open(os.path.join(out, name + ".rgb"), "wb").write(Image.open(p).convert("RGB").tobytes())
