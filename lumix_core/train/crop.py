"""Resize + crop plans computed once per scene and applied to every map of it.

Why a *plan*: the maps of a scene are pixel-aligned and must stay so, so the resize and the
crop window are decided once from the scene's size (and, for random crops, from the seed
and the scene id -- not from the order scenes are read in) and then applied identically to
albedo, color, depth... The result is always a multiple of 16 pixels (FLUX latents are 8x
downsampled and packed in 2x2 patches).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..latents import SIZE_MULTIPLE, check_size


@dataclass(frozen=True)
class CropSpec:
    """Target size (None: keep each scene's own size) and where the crop window sits."""

    width: Optional[int] = None
    height: Optional[int] = None
    mode: str = "center"  # or "random"
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height, or neither")
        if self.width is not None:
            check_size(self.width, self.height)
        if self.mode not in ("center", "random"):
            raise ValueError(f"crop mode must be 'center' or 'random', got '{self.mode}'")

    @classmethod
    def parse(cls, size: Optional[str], mode: str = "center", seed: int = 0) -> "CropSpec":
        """``"512"`` (square) or ``"768x512"`` (width x height); None keeps the native size."""
        if size is None or str(size).strip() == "":
            return cls(None, None, mode, seed)
        text = str(size).lower().replace(" ", "")
        try:
            if "x" in text:
                w, h = (int(v) for v in text.split("x", 1))
            else:
                w = h = int(text)
        except ValueError:
            raise ValueError(f"size '{size}' is not '512' or 'WxH' like '768x512'") from None
        return cls(w, h, mode, seed)

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "mode": self.mode, "seed": self.seed}


@dataclass(frozen=True)
class CropPlan:
    """Resize the scene to ``resize`` (w, h), then keep the window ``left, top, width, height``."""

    resize: tuple[int, int]
    left: int
    top: int
    width: int
    height: int


def plan_crop(src_width: int, src_height: int, spec: CropSpec, scene_id: str) -> CropPlan:
    """The plan for one scene; ``ValueError`` if a native size is not a multiple of 16."""
    if spec.width is None:
        if src_width % SIZE_MULTIPLE or src_height % SIZE_MULTIPLE:
            raise ValueError(f"image size {src_width}x{src_height} is not a multiple of {SIZE_MULTIPLE}; "
                             "pass --size (e.g. --size 512) to resize and crop")
        return CropPlan((src_width, src_height), 0, 0, src_width, src_height)
    tw, th = spec.width, spec.height
    scale = max(tw / src_width, th / src_height)  # cover the target: the short side fits
    rw, rh = max(tw, round(src_width * scale)), max(th, round(src_height * scale))
    if spec.mode == "center":
        left, top = (rw - tw) // 2, (rh - th) // 2
    else:
        rng = random.Random(f"{spec.seed}/{scene_id}")  # str seeds are hashed with SHA-512: stable across runs
        left, top = rng.randint(0, rw - tw), rng.randint(0, rh - th)
    return CropPlan((rw, rh), left, top, tw, th)


def apply_crop(image: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Apply a plan to one ``[H, W, C]`` float image (area filter to shrink, bilinear to enlarge)."""
    import cv2

    h, w = image.shape[:2]
    rw, rh = plan.resize
    if (rw, rh) != (w, h):
        interp = cv2.INTER_AREA if rw < w and rh < h else cv2.INTER_LINEAR
        image = cv2.resize(image, (rw, rh), interpolation=interp)
        if image.ndim == 2:
            image = image[:, :, None]
    out = image[plan.top: plan.top + plan.height, plan.left: plan.left + plan.width]
    return np.ascontiguousarray(out)
