"""The pristine photo pool: real photographs from Debian packages (or a folder you bring), offline.

    python -m training.photos                     # fetch the Debian packages, build the pool
    python -m training.photos --folder ~/photos   # add your own pristine photos to it
    python -m training.photos --pack pack.tar     # the pool as a compact tar (JPEG q95) to carry

The packages are fetched with `apt-get download` and unpacked with `dpkg -x` (nothing is
installed). Most of their photos are lossy-compressed, so each one is downscaled at least 2x,
which washes out its own compression, to at most POOL_MAX_SIDE pixels, and kept as PNG.
Photos are split into train and validation by a hash of their name, so a photo and all
its crops land on one side. Everything lives in the cache ($IQA_DATA, default
~/.cache/iqa-degradation), never in git.

Images shipped inside PyPI packages are reserved for held-out evaluation: none are used here.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

CACHE = Path(os.environ.get("IQA_DATA", Path.home() / ".cache" / "iqa-degradation"))
POOL_MAX_SIDE = 768
MIN_POOL_SIDE = 256  # the smallest virtual image training cuts (2x2 patches of 128 px)
VALIDATION_SHARE = 0.2
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}

# Package -> where its photographs are (globs under the unpacked tree). Curated by eye: these
# directories hold photos, their siblings hold drawings, renders, icons and calibration charts.
DEBIAN_SOURCES: dict[str, tuple[str, ...]] = {
    "gcompris-qt-data": ("usr/share/gcompris-qt/rcc/*.rcc",),
    "mate-backgrounds": ("usr/share/backgrounds/mate/nature/*.jpg",),
    "plasma-workspace-wallpapers": ("usr/share/wallpapers/*/contents/images/*.jpg",),
    "tuxpaint-data": ("usr/share/tuxpaint/templates/*.jpg",),
    "palapeli-data": ("usr/share/palapeli/collection/*.jpg", "usr/share/palapeli/backgrounds/*.jpg"),
    "opencv-doc": tuple(
        f"usr/share/doc/opencv-doc/examples/data/{name}"
        for name in ("baboon.jpg", "building.jpg", "butterfly.jpg", "fruits.jpg", "home.jpg", "messi5.jpg",
                     "orange.jpg", "squirrel_cls.jpg", "apple.jpg", "lena.jpg", "aloeL.jpg", "leuvenA.jpg")
    ),
    "lomiri-wallpapers-16.04": ("usr/share/backgrounds/*.jpg",),
    "lomiri-wallpapers-20.04": ("usr/share/backgrounds/*.jpg",),
    "enlightenment-data": ("usr/share/enlightenment/data/backgrounds/*.edj",),  # 400 MB: 4K photos in Edje files
    # Smooth, dark, low-contrast and shallow-depth-of-field photos (macro, fog, clouds, dusk), 2000-3000 px;
    # the package's other wallpapers are renders and logos.
    "lxqt-themes": tuple(
        f"usr/share/lxqt/wallpapers/{name}"
        for name in ("Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png", "beam.png",
                     "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg", "this-is-not-windows.jpg")
    ),
    "scribus-template": ("usr/share/scribus/templates/*/*.jpg",),  # dusk, moon and eclipse shots, a pizza
    "digikam-data": ("usr/share/digikam/about/images/body-background.jpg",),  # a 4032x3024 phone photo
}
# Packages whose listed files were all checked by eye: their dark skies and black backgrounds fail
# looks_like_a_photo()'s flat-area test, which is there for folders that mix photos with drawings.
CHECKED_BY_EYE = {"lxqt-themes", "scribus-template", "digikam-data"}
# Looked at and left out (no photographs in Debian 12's versions): ukui-wallpapers and gnome-backgrounds
# (renders and illustrations), lomiri-wallpapers (one drawing), imagemagick-6-doc (logos, a wizard).


# Pictures in those folders that pass looks_like_a_photo() but are paintings, renders or gradients.
NOT_PHOTOS = ("wallpapers/Autumn/", "wallpapers/Honeywave/", "wallpapers/SafeLanding/", "wallpapers/Shell/",
              "wallpapers/Volna/", "umang_by_Abhishek_Mudgal", "analogpattern_by_Peter_Nerlich")
# The photos in tests/data come from tuxpaint-data: keep them out of training so tests score held-out photos.
ALWAYS_VALIDATION = ("tuxpaint/templates/sheep", "tuxpaint/templates/rocks", "tuxpaint/templates/lighthouse")


@dataclass(frozen=True)
class Photo:
    name: str
    split: str  # "train" or "validation"
    path: Path


def split_of(name: str) -> str:
    if any(marker.replace("/", "--") in name for marker in ALWAYS_VALIDATION):
        return "validation"
    digest = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if digest < VALIDATION_SHARE else "train"


def looks_like_a_photo(image: Image.Image) -> bool:
    """Reject drawings, renders and screenshots: they have large perfectly flat areas and few colours.

    A camera's sensor noise leaves almost no two neighbouring pixels identical; a drawing is mostly
    flat fills.
    """
    small = np.asarray(image.convert("RGB").resize((256, 256), Image.Resampling.BILINEAR), dtype=np.int16)
    flat = (np.abs(np.diff(small, axis=1)).max(axis=2) == 0).mean()
    colours = len(np.unique(small.reshape(-1, 3), axis=0))
    return flat < 0.12 and colours > 12000


def content_weight(rgb: np.ndarray) -> float:
    """How often training should draw this photo: 1, plus 1 for each kind of content that is rare in
    wallpaper collections and hard for the model: dark (mean luma < 0.25), low contrast (luma standard
    deviation < 0.12) and smooth (over half the picture without detail: shallow depth of field, sky, fog)."""
    luma = np.asarray(Image.fromarray(rgb).convert("L").resize((128, 96), Image.Resampling.BOX), np.float32) / 255
    detail = np.abs(np.diff(luma, axis=1))[:-1] + np.abs(np.diff(luma, axis=0))[:, :-1]
    return 1.0 + float(luma.mean() < 0.25) + float(luma.std() < 0.12) + float((detail < 0.02).mean() > 0.5)


def _webps_in_qt_resource(data: bytes) -> list[bytes]:
    """Qt .rcc archives store files back to back; WebP is a RIFF chunk that carries its own length."""
    found = []
    for match in re.finditer(rb"RIFF(....)WEBP", data, flags=re.DOTALL):
        size = int.from_bytes(match.group(1), "little") + 8
        found.append(data[match.start() : match.start() + size])
    return found


def _largest_jpeg_in_edje(data: bytes) -> bytes | None:
    """Edje (.edj) files keep a wallpaper as JPEG streams at a dozen resolutions: the largest one.

    A stream starts at a JPEG start-of-image marker; Pillow reads its header and stops at its end.
    """
    best, best_area = None, 0
    start = data.find(b"\xff\xd8\xff")
    while start >= 0:
        try:
            width, height = Image.open(io.BytesIO(data[start:])).size
        except Exception:  # a marker-like byte run inside other data
            width = height = 0
        if width * height > best_area:
            best, best_area = start, width * height
        start = data.find(b"\xff\xd8\xff", start + 3)
    return None if best is None else data[best:]


# Packages that ship each picture at several resolutions, one folder per picture: keep the largest.
ONE_PER_FOLDER = {"plasma-workspace-wallpapers"}


def _candidates(package: str, root: Path, patterns: tuple[str, ...]):
    """(name, opener) for each image a package's patterns match; names are unique within the package."""
    for pattern in patterns:
        paths = sorted(root.glob(pattern))
        if package in ONE_PER_FOLDER:
            largest = {}
            for path in paths:
                if path.stat().st_size > largest.get(path.parent, (0, None))[0]:
                    largest[path.parent] = (path.stat().st_size, path)
            paths = sorted(path for _, path in largest.values())
        for path in paths:
            stem = str(path.relative_to(root).with_suffix(""))
            if path.suffix == ".rcc":
                for index, blob in enumerate(_webps_in_qt_resource(path.read_bytes())):
                    yield f"{stem}-{index}", lambda blob=blob: Image.open(io.BytesIO(blob))
            elif path.suffix == ".edj":
                blob = _largest_jpeg_in_edje(path.read_bytes())
                if blob is not None:  # some hold only vector art
                    yield stem, lambda blob=blob: Image.open(io.BytesIO(blob))
            else:
                yield stem, lambda path=path: Image.open(path)


def fetch_debian(packages: list[str]) -> dict[str, Path]:
    """apt-get download + dpkg -x each package into the cache; returns package -> unpacked root."""
    debs, roots = CACHE / "debs", {}
    debs.mkdir(parents=True, exist_ok=True)
    for package in packages:
        root = CACHE / "extract" / package
        if not root.exists():
            if not list(debs.glob(f"{package}_*.deb")):
                subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
            (deb,) = debs.glob(f"{package}_*.deb")
            # Unpack beside the target and rename: a half-unpacked tree (a stopped run, or another worktree
            # sharing the cache) must never pass for a finished one.
            partial = root.with_name(f"{root.name}.partial-{os.getpid()}")
            partial.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg", "-x", str(deb), str(partial)], check=True)
            try:
                partial.rename(root)
            except OSError:  # another run unpacked it first
                shutil.rmtree(partial)
        roots[package] = root
    return roots


def originals(names: set[str]) -> dict[str, Image.Image]:
    """The pool photos' source pictures at their own size (EXIF-upright RGB), by pool name, for the Debian
    packages already in the cache (the photos you added from a folder are not kept: they are left out)."""
    found = {}
    for package, patterns in DEBIAN_SOURCES.items():
        root = CACHE / "extract" / package
        if not root.exists() or not any(name.startswith(f"{package}--") for name in names):
            continue
        for stem, open_image in _candidates(package, root, patterns):
            name = f"{package}/{stem}".replace("/", "--")
            if name in names:
                found[name] = ImageOps.exif_transpose(open_image()).convert("RGB")
    return found


def to_pristine(image: Image.Image) -> Image.Image | None:
    """Downscale at least 2x (and to at most POOL_MAX_SIDE); None if the result would be too small."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    factor = max(2.0, max(image.size) / POOL_MAX_SIDE)
    size = (round(image.width / factor), round(image.height / factor))
    if min(size) < MIN_POOL_SIDE:
        return None
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def add_to_pool(name: str, open_image, pool: Path, manifest: dict, check_photo: bool) -> str:
    if name in manifest:
        return "known"
    try:
        image = open_image()
        image.load()
    except Exception as error:  # a broken file in someone's folder is skipped, not fatal
        return f"unreadable ({error})"
    if check_photo and not looks_like_a_photo(image):
        return "not a photo"
    pristine = to_pristine(image)
    if pristine is None:
        return "too small"
    path = pool / f"{name}.png"
    pristine.save(path)
    manifest[name] = {"split": split_of(name), "file": path.name, "size": list(pristine.size)}
    return "added"


def load_manifest(pool: Path) -> dict:
    path = pool / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def photos(pool: Path = CACHE / "pool", split: str | None = None) -> list[Photo]:
    """The pool's photos (optionally one split), in a stable order."""
    manifest = load_manifest(pool)
    if not manifest:
        raise FileNotFoundError(f"no photo pool in {pool}: run `make photos` first (once: it downloads over "
                                "400 MB of Debian packages and keeps the photos outside git)")
    return [
        Photo(name, entry["split"], pool / entry["file"])
        for name, entry in sorted(manifest.items())
        if split is None or entry["split"] == split
    ]


def write_pack(pool: Path, target: Path) -> None:
    """The pool as a tar of JPEG q95 (4:4:4) plus the manifest: ~6x smaller than PNG, for carrying.

    Training downscales every photo again (>= 1.25x), which washes out what q95 leaves.
    """
    manifest = load_manifest(pool)
    with tarfile.open(target, "w") as tar:
        for name, entry in sorted(manifest.items()):
            buffer = io.BytesIO()
            Image.open(pool / entry["file"]).save(buffer, format="JPEG", quality=95, subsampling=0)
            info = tarfile.TarInfo(f"{name}.jpg")
            info.size = buffer.tell()
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
            entry["file"] = info.name
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path, default=CACHE / "pool")
    parser.add_argument("--folder", type=Path, action="append", default=[],
                        help="add every image under this folder (trusted to be pristine photos)")
    parser.add_argument("--no-debian", action="store_true", help="skip the Debian packages")
    parser.add_argument("--pack", type=Path, help="also write the pool as a compact tar here")
    args = parser.parse_args(argv)

    args.pool.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(args.pool)
    outcomes: dict[str, int] = {}

    def add(name: str, open_image, check_photo: bool) -> None:
        outcome = add_to_pool(name, open_image, args.pool, manifest, check_photo)
        outcomes[outcome.split(" (")[0]] = outcomes.get(outcome.split(" (")[0], 0) + 1

    if not args.no_debian:
        for package, root in fetch_debian(list(DEBIAN_SOURCES)).items():
            for name, open_image in _candidates(package, root, DEBIAN_SOURCES[package]):
                if any(marker in name for marker in NOT_PHOTOS):
                    continue
                add(f"{package}/{name}".replace("/", "--"), open_image, check_photo=package not in CHECKED_BY_EYE)
    for folder in args.folder:
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                name = "user--" + str(path.relative_to(folder).with_suffix("")).replace("/", "--")
                add(name, lambda path=path: Image.open(path), check_photo=False)

    (args.pool / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    splits = {s: sum(e["split"] == s for e in manifest.values()) for s in ("train", "validation")}
    print(f"pool {args.pool}: {len(manifest)} photos ({splits['train']} train, {splits['validation']} validation);"
          f" this run: {outcomes}")
    if args.pack:
        write_pack(args.pool, args.pack)
        print(f"pack {args.pack}: {args.pack.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
