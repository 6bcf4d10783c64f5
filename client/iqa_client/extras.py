"""The client's optional dependencies (its extras): import one, or say which `pip install` adds it.

The core needs tritonclient and numpy only. `video` adds PyAV (reading videos) and matplotlib
(timeline plots); `images` adds Pillow and pillow-heif (opening HEIC files as PIL images); `map`
adds matplotlib and Pillow (degradation map plots).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from types import ModuleType

from iqa_client.errors import MissingExtraError

# import name -> (distribution on PyPI, the client's extra that installs it)
EXTRAS = {
    "av": ("av", "video"),
    "matplotlib": ("matplotlib", "video"),
    "PIL": ("pillow", "images"),
    "pillow_heif": ("pillow-heif", "images"),
}


def require(module: str, purpose: str, extra: str | None = None) -> ModuleType:
    """Import an optional dependency, or raise MissingExtraError naming the pip install that adds it.

    purpose: what needs it, for the message ("iqa video", "VideoReport.plot"). extra: the client's
    extra to name when it is not the module's usual one (`map` for matplotlib in a map's plot).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        distribution, usual = EXTRAS[module]
        extra = extra or usual
        raise MissingExtraError(
            f"{purpose} needs {distribution}, which is not installed: pip install '{requirement(distribution, extra)}'"
            f" (or the client with its '{extra}' extra: pip install './client[{extra}]' from the repository)"
        ) from None


def require_all(modules: list[str], purpose: str, extra: str | None = None) -> None:
    """require() each of them, so that every missing one is reported before any work starts."""
    missing = []
    for module in modules:
        try:
            require(module, purpose, extra)
        except MissingExtraError as err:
            missing.append(str(err))
    if missing:
        raise MissingExtraError("; ".join(missing))


def requirement(distribution: str, extra: str) -> str:
    """The requirement the installed client declares for it (`av>=12`), else the bare name."""
    try:
        declared = importlib.metadata.requires("iqa-client") or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    for line in declared:  # e.g. 'av>=12; extra == "video"'
        spec, _, marker = line.partition(";")
        name = re.match(r"[A-Za-z0-9._-]*", spec.strip())[0]
        if name.lower() == distribution and f'extra == "{extra}"' in marker:
            return spec.strip()
    return distribution
