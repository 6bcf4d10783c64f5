"""Pristine pictures that are not photographs, drawn by the training code: screenshots, slides, documents,
charts and graphics are a large share of what a scoring service receives, and a model that only ever saw
photos read a clean text page as noise 0.90 (issue 12).

    render(rng, width, height) -> RGB uint8 [height, width, 3]: a text page, a UI-like layout, a chart
                                  or a flat graphic, each a clean (lossless) rendering
    caption(photo, rng)        -> the photo with a caption or watermark drawn over it

Text comes in every font Pillow can find (its own built-in one, then any TrueType font under
$IQA_FONTS, /usr/share/fonts or matplotlib's, where installed), at 8-40 px, anti-aliased or not,
bold by stroke. Everything is a pure function of the numpy Generator passed in.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = (
    "the of and to in is for on with as by at from this that be are or it was an which not have has more "
    "image quality score noise blur compression service server request response model network patch photo "
    "settings account profile search results download upload share report total average monthly revenue "
    "growth chart table figure section chapter page summary introduction method data value error status "
    "open close save cancel next previous help about contact home news sign in out 2024 2025 12 % 3.5 $ "
    "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore"
).split()

KINDS = ("text_page", "ui", "chart", "flat_graphic")


@functools.lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """TrueType fonts found on this machine (may be none: Pillow's built-in font is always there)."""
    folders = [Path(os.environ.get("IQA_FONTS", "/usr/share/fonts")), Path("/usr/share/fonts")]
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.submodule_search_locations:
        folders.append(Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf")
    found = sorted({str(p) for folder in folders if folder.exists() for p in folder.rglob("*.ttf")})
    # Last Resort draws a box for whatever it is asked; the TeX extension fonts hold symbols only.
    return tuple(f for f in found if not any(n in f for n in ("LastResort", "cmex", "cmsy")) and _draws_letters(f))


def _draws_letters(path: str) -> bool:
    """Symbol and math-extension fonts draw a box (their missing-glyph mark) for letters and digits."""
    try:
        font = ImageFont.truetype(path, 20)
    except OSError:
        return False

    def drawn(text: str) -> bytes:
        image = Image.new("L", (40, 40))
        ImageDraw.Draw(image).text((5, 5), text, font=font, fill=255)
        return image.tobytes()

    missing = drawn("\u0378")  # an unassigned code point: the font's missing glyph
    return all(drawn(c) != missing for c in "Aa0")


@functools.lru_cache(maxsize=256)
def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size) if path is None else ImageFont.truetype(path, size)


def random_font(rng: np.random.Generator, low: int = 8, high: int = 40) -> ImageFont.FreeTypeFont:
    files = (None,) + font_files()
    return _font(files[int(rng.integers(len(files)))], int(rng.integers(low, high + 1)))


def _colour(rng: np.random.Generator, light: bool | None = None) -> tuple[int, int, int]:
    if light is None:
        return tuple(int(v) for v in rng.integers(0, 256, 3))
    base = rng.integers(200, 256, 3) if light else rng.integers(0, 70, 3)
    return tuple(int(v) for v in base)


def _sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(WORDS[int(i)] for i in rng.integers(len(WORDS), size=words))


def _draw(image: Image.Image, rng: np.random.Generator) -> ImageDraw.ImageDraw:
    draw = ImageDraw.Draw(image)
    draw.fontmode = "L" if rng.random() < 0.8 else "1"  # anti-aliased text, or hard-edged as old UIs draw it
    return draw


def text_page(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    dark_mode = rng.random() < 0.2
    image = Image.new("RGB", (width, height), _colour(rng, light=not dark_mode))
    draw = _draw(image, rng)
    font = random_font(rng, 8, 28)
    ink, margin = _colour(rng, light=dark_mode), int(rng.integers(4, 40))
    line_height = int(font.size * rng.uniform(1.15, 1.7))
    y = margin - int(rng.integers(0, line_height))
    while y < height:
        if rng.random() < 0.08:  # a heading
            draw.text((margin, y), _sentence(rng, 3).title(), font=random_font(rng, font.size, font.size * 2), fill=ink,
                      stroke_width=int(rng.integers(0, 2)), stroke_fill=ink)
        else:
            draw.text((margin, y), _sentence(rng, 14), font=font, fill=ink)
        y += line_height
    return image


def ui(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), _colour(rng, light=rng.random() < 0.7))
    draw = _draw(image, rng)
    accent = _colour(rng)
    bar = int(rng.integers(20, 60))
    draw.rectangle((0, 0, width, bar), fill=accent)
    draw.text((10, bar // 4), _sentence(rng, 3), font=random_font(rng, 10, 20), fill=_colour(rng, light=True))
    side = int(rng.integers(0, width // 3))
    if side:
        draw.rectangle((0, bar, side, height), fill=_colour(rng, light=rng.random() < 0.5))
        for i, y in enumerate(range(bar + 10, height, int(rng.integers(22, 40)))):
            draw.text((8, y), _sentence(rng, 2), font=random_font(rng, 9, 16), fill=_colour(rng, light=False))
    y = bar + 10
    while y < height - 20:
        x0 = side + int(rng.integers(8, 30))
        kind = rng.random()
        if kind < 0.35:  # a button
            w, h = int(rng.integers(50, 160)), int(rng.integers(18, 40))
            draw.rounded_rectangle((x0, y, x0 + w, y + h), radius=int(rng.integers(0, 12)), fill=_colour(rng),
                                   outline=_colour(rng) if rng.random() < 0.5 else None)
            draw.text((x0 + 6, y + h // 4), _sentence(rng, 1), font=random_font(rng, 9, 16), fill=_colour(rng))
            y += h + int(rng.integers(6, 20))
        elif kind < 0.6:  # an input box
            w, h = int(rng.integers(100, max(101, width - x0 - 10))), int(rng.integers(18, 32))
            draw.rectangle((x0, y, x0 + w, y + h), fill=(255, 255, 255), outline=_colour(rng, light=False))
            y += h + int(rng.integers(6, 20))
        elif kind < 0.8:  # icons in a row
            r = int(rng.integers(5, 16))
            for x in range(x0, min(width - r, x0 + 8 * 3 * r), 3 * r):
                draw.ellipse((x, y, x + 2 * r, y + 2 * r), fill=_colour(rng))
            y += 2 * r + 10
        else:  # a line of text and a separator
            draw.text((x0, y), _sentence(rng, 8), font=random_font(rng, 9, 18), fill=_colour(rng, light=False))
            y += 24
            draw.line((x0, y, width - 10, y), fill=_colour(rng), width=1)
            y += 8
    return image


def chart(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), _colour(rng, light=True))
    draw = _draw(image, rng)
    left, bottom, top, right = int(width * 0.12), int(height * 0.85), int(height * 0.1), int(width * 0.95)
    axis = _colour(rng, light=False)
    font = random_font(rng, 8, 16)
    for y in np.linspace(bottom, top, int(rng.integers(3, 8))):
        draw.line((left, y, right, y), fill=(220, 220, 220) if rng.random() < 0.7 else axis, width=1)
        draw.text((4, y - font.size // 2), f"{rng.integers(0, 1000)}", font=font, fill=axis)
    draw.line((left, top, left, bottom), fill=axis, width=int(rng.integers(1, 3)))
    draw.line((left, bottom, right, bottom), fill=axis, width=int(rng.integers(1, 3)))
    series = int(rng.integers(1, 4))
    points = int(rng.integers(4, 16))
    xs = np.linspace(left + 10, right - 10, points)
    for s in range(series):
        values = np.clip(np.cumsum(rng.normal(0, 0.15, points)) + rng.uniform(0.3, 0.7), 0.05, 0.95)
        ys = bottom - values * (bottom - top)
        colour = _colour(rng)
        if rng.random() < 0.5:  # bars
            w = max(2, int((right - left) / points / (series + 1)))
            for x, y in zip(xs, ys):
                draw.rectangle((x + s * w - w, y, x + s * w, bottom), fill=colour)
        else:
            draw.line(list(zip(xs, ys)), fill=colour, width=int(rng.integers(1, 4)))
    draw.text((left, 2), _sentence(rng, 4).title(), font=random_font(rng, 10, 22), fill=axis)
    return image


def flat_graphic(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    # Drawn at 1x (hard edges) or 2-4x then shrunk (anti-aliased edges, as vector graphics render).
    scale = int(rng.choice((1, 2, 4)))
    image = Image.new("RGB", (width * scale, height * scale), _colour(rng))
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.4:  # a linear gradient background
        a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
        ramp = np.linspace(0, 1, width * scale, dtype=np.float32)[None, :, None]
        image = Image.fromarray(np.repeat(np.rint(a + (b - a) * ramp).astype(np.uint8), height * scale, axis=0))
        draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 12))):
        x0, x1 = sorted(rng.integers(0, width * scale, 2))
        y0, y1 = sorted(rng.integers(0, height * scale, 2))
        shape = rng.random()
        if shape < 0.35:
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        elif shape < 0.7:
            draw.ellipse((x0, y0, x1, y1), fill=_colour(rng))
        else:
            draw.polygon([tuple(int(v) for v in p) for p in rng.integers(0, (width * scale, height * scale), (3, 2))],
                         fill=_colour(rng))
    if scale > 1:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def render(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A clean non-photographic picture of the given size, RGB uint8 [height, width, 3]."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    return np.asarray({"text_page": text_page, "ui": ui, "chart": chart, "flat_graphic": flat_graphic}[kind](
        rng, width, height).convert("RGB"))


def caption(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo with a caption drawn over it: outlined text, or text on a (semi-transparent) band."""
    image = Image.fromarray(photo).convert("RGBA")
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = _draw(overlay, rng)
    font = random_font(rng, 12, 40)
    text = _sentence(rng, int(rng.integers(2, 7)))
    y = int(rng.integers(0, max(1, image.height - font.size - 8)))
    if rng.random() < 0.5:
        draw.rectangle((0, y - 4, image.width, y + font.size + 8), fill=_colour(rng) + (int(rng.integers(120, 256)),))
        draw.text((8, y), text, font=font, fill=_colour(rng) + (255,))
    else:
        draw.text((int(rng.integers(0, max(1, image.width // 3))), y), text, font=font, fill=_colour(rng) + (255,),
                  stroke_width=int(rng.integers(1, 4)), stroke_fill=_colour(rng) + (255,))
    return np.asarray(Image.alpha_composite(image, overlay).convert("RGB"))
