"""A user's pictures of a concept, read from a folder."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from editflow.errors import EditflowError

SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def load_images(folder: str | Path) -> list:
    """The images in ``folder`` (png, jpg, jpeg, webp, bmp), sorted by name."""
    path = Path(folder)
    if not path.is_dir():
        raise EditflowError(f"image folder not found: {folder}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise EditflowError(f"no images (png, jpg, webp, bmp) in {folder}")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                images.append(im.convert("RGB"))
        except OSError as exc:
            raise EditflowError(f"cannot read image {f}: {exc}") from None
    return images
