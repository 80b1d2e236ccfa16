"""A user's own images: ``train/<class>/*.png`` and ``test/<class>/*.png`` class folders.

Looked for under ``<data_dir>/imagefolder/`` or ``<data_dir>/`` itself. All images are decoded
once into memory at a common size (that of the first image when all agree, else 32x32), in
grayscale when the first image is grayscale, else RGB; normalised with the train statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DatasetNotFoundError
from .datasets import DATA_ENV, DataSplits, channel_stats, normalise, register_dataset

FALLBACK_SIZE = 32
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_LAYOUT = "DIR/imagefolder/train/<class>/*.png and DIR/imagefolder/test/<class>/*.png (or DIR/train, DIR/test)"


def _find_root(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise DatasetNotFoundError(
            f"dataset 'imagefolder' not found: no data directory given. Provide it with "
            f"--data-dir DIR or {DATA_ENV}=DIR, laid out as {_LAYOUT}"
        )
    for root in (data_dir / "imagefolder", data_dir):
        if (root / "train").is_dir() and (root / "test").is_dir():
            return root
    raise DatasetNotFoundError(
        f"dataset 'imagefolder' not found: searched data directory {data_dir} for train/ and test/ "
        f"folders. Provide them with --data-dir DIR or {DATA_ENV}=DIR, laid out as {_LAYOUT}"
    )


def _read_images(paths: list[str], mode: str | None):
    """Decode ``paths`` in ``mode`` (None: decided by the first image); returns (images, mode)."""
    from PIL import Image

    images = []
    for p in paths:
        with Image.open(p) as im:
            if mode is None:
                mode = "L" if im.mode in _GRAY_MODES else "RGB"
            images.append(im.convert(mode))
    return images, mode


@register_dataset("imagefolder")
def _load_imagefolder(data_dir: Path | None, root_cache: Path) -> DataSplits:
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    root = _find_root(data_dir)
    try:
        train_set = ImageFolder(str(root / "train"))
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"dataset 'imagefolder': {err} (expected {_LAYOUT})") from None
    classes = train_set.class_to_idx
    unknown = sorted(d.name for d in (root / "test").iterdir() if d.is_dir() and d.name not in classes)
    if unknown:
        raise ConfigError(f"imagefolder: test classes {unknown} have no train folder in {root / 'train'}")
    # Train's class_to_idx so labels agree even when test lacks a class.
    test_samples = make_dataset(str(root / "test"), classes, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not test_samples:
        raise DatasetNotFoundError(f"dataset 'imagefolder': no images in {root / 'test'} (expected {_LAYOUT})")

    tr_imgs, mode = _read_images([p for p, _ in train_set.samples], None)
    te_imgs, _ = _read_images([p for p, _ in test_samples], mode)
    sizes = {im.size for im in tr_imgs + te_imgs}
    size = tr_imgs[0].size if len(sizes) == 1 else (FALLBACK_SIZE, FALLBACK_SIZE)

    def to_tensor(imgs) -> torch.Tensor:
        arr = np.stack([np.asarray(im if im.size == size else im.resize(size, Image.BILINEAR)) for im in imgs])
        x = torch.from_numpy(arr)
        return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()

    xtr, xte = to_tensor(tr_imgs), to_tensor(te_imgs)
    mean, std = channel_stats(xtr)
    return DataSplits(
        name="imagefolder",
        train=(normalise(xtr, mean, std), torch.tensor(train_set.targets, dtype=torch.int64)),
        test=(normalise(xte, mean, std), torch.tensor([t for _, t in test_samples], dtype=torch.int64)),
        val=None,
        input_shape=tuple(xtr.shape[1:]),
        num_classes=len(train_set.classes),
    )
