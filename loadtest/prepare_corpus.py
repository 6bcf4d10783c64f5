"""Prepare the load-test corpus: real photos in mixed sizes and formats, as production traffic is.

    .venv/bin/python -m loadtest.prepare_corpus [--out loadtest/corpus] [--debian]

Sources: the photos in tests/data/ and, with --debian, the 19 photo templates of Debian's
`tuxpaint-data` package (apt-get download + dpkg -x into ~/.cache, nothing installed).
Each photo is written at native size and at half size, as JPEG (quality 90 and 60), PNG and WebP.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "loadtest" / "corpus"
CACHE = Path.home() / ".cache" / "iqa-loadtest"
VARIANTS = (("jpg", "JPEG", {"quality": 90}), ("q60.jpg", "JPEG", {"quality": 60}),
            ("png", "PNG", {}), ("webp", "WEBP", {"quality": 85}))


def debian_photos() -> list[Path]:
    """The photo templates of Debian's tuxpaint-data, fetched once into the cache."""
    templates = CACHE / "tuxpaint-data" / "usr" / "share" / "tuxpaint" / "templates"
    if not templates.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as download:
            subprocess.run(["apt-get", "download", "-qq", "tuxpaint-data"], cwd=download, check=True)
            deb = next(Path(download).glob("tuxpaint-data_*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), str(CACHE / "tuxpaint-data")], check=True)
    return sorted(templates.glob("*.jpg"))


def repository_photos() -> list[Path]:
    """The repository's own photos (tests/data), always at hand."""
    return sorted((REPO / "tests" / "data").glob("*.jpg"))


def variants(source: Path) -> Iterator[tuple[str, bytes]]:
    """(file name, encoded bytes) of one photo at native and half size, in each of the corpus's formats."""
    photo = Image.open(source).convert("RGB")
    for scale in (1, 2):
        image = photo if scale == 1 else photo.resize((photo.width // 2, photo.height // 2), Image.LANCZOS)
        for suffix, fmt, params in VARIANTS:
            buffer = io.BytesIO()
            image.save(buffer, format=fmt, **params)
            yield f"{source.stem}_{image.width}x{image.height}.{suffix}", buffer.getvalue()


def prepare(out: Path = DEFAULT_OUT, debian: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in repository_photos() + (debian_photos() if debian else []):
        for name, data in variants(source):
            (out / name).write_bytes(data)
            written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--debian", action="store_true", help="add the tuxpaint-data photos (7.8 MB download)")
    args = parser.parse_args(argv)
    written = prepare(args.out, args.debian)
    size = sum(p.stat().st_size for p in written)
    print(f"{len(written)} images, {size / 1e6:.1f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
