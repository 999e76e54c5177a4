"""Dense optical flow between a shot's frames, and warping a map by it (opencv).

Why flow on the color frames: they are the input, known exactly; the maps are predictions.
Flow ``f`` from frame ``a`` to frame ``b`` is backward flow for warping: ``a(x) ~ b(x + f(x))``,
so :func:`warp` brings ``b``'s maps onto ``a``'s pixels. Layouts: frames and maps
``[H, W, C]`` float in [0, 1] (numpy), flow ``[H, W, 2]`` in pixels (x, y), the points a warp
reads (:func:`sample_points`) two float32 ``[H, W]`` arrays, made once per flow for all its warps.

opencv is an extra (``pip install opencv-python``, part of ``lumix-intrinsics[train]``); it is
imported only when flow is needed, so a locked-off shot needs none.
"""
from __future__ import annotations

import numpy as np

__all__ = ["NEEDS_OPENCV", "require_opencv", "flow", "sample_points", "warp", "photometric_weight"]

NEEDS_OPENCV = ("LumiX: temporal blending of a moving camera needs opencv-python for optical flow: "
                "pip install opencv-python (or lumix-intrinsics[train]); or set the camera to locked-off or none")


def require_opencv() -> None:
    """Refuse, before any model runs, a moving-camera blend that could not run (opencv missing)."""
    _cv2()


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError(NEEDS_OPENCV) from None
    return cv2


def _gray8(image: np.ndarray) -> np.ndarray:
    rgb = np.clip(np.asarray(image, dtype=np.float32)[..., :3], 0.0, 1.0)
    return np.round((rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) * 255.0).astype(np.uint8)


def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DIS flow ``[H, W, 2]`` from frame ``a`` to frame ``b`` (``a(x) ~ b(x + f(x))``): opencv's dense
    inverse search, medium preset (on the synthetic shots it tracks better than Farneback)."""
    cv2 = _cv2()
    solver = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return solver.calc(_gray8(a), _gray8(b), None)


def sample_points(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x + f_x(x), y + f_y(x))``: where a warp by flow ``f`` reads each pixel."""
    h, w = f.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return gx + f[..., 0], gy + f[..., 1]


def warp(image: np.ndarray, points: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``image`` ``[H, W, C]`` sampled at ``points`` (:func:`sample_points`; bilinear, edges replicated)."""
    cv2 = _cv2()
    out = cv2.remap(np.ascontiguousarray(image, dtype=np.float32), points[0], points[1],
                    interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(image.shape)


def photometric_weight(a: np.ndarray, b_warped: np.ndarray, f: np.ndarray, tolerance: float = 0.04) -> np.ndarray:
    """``[H, W]`` trust in a warped neighbour: ``exp(-(err / tolerance)^2)`` of the color error
    after warping, 0 where the flow points outside the frame (nothing there to borrow; tested in
    float64, exactly, where the float32 points of a warp may round onto the border)."""
    h, w = f.shape[:2]
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    x, y = gx + f[..., 0], gy + f[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    err = np.abs(np.asarray(a, np.float32)[..., :3] - b_warped[..., :3]).mean(axis=-1)
    return np.where(inside, np.exp(-(err / tolerance) ** 2), 0.0).astype(np.float32)
