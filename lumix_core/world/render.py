"""A synthetic intrinsic world: tiny ray-cast scenes with exact ground truth for all maps.

Why: the LumiX math (QBA, Tensor LoRA, the training loop) must be checked end to end on
CPU, in seconds, on data whose albedo / irradiance / depth / normals are *known*, so a
toy model's errors can be measured instead of eyeballed. Real intrinsic datasets
(Hypersim) are huge and their ground truth is itself approximate; here every buffer is
computed analytically per pixel.

Scenes (what is in them, sampling, captions) live in :mod:`lumix_core.world.scene`; this
module ray-casts them: one ray per pixel centre, numpy, vectorised over pixels, with shadow
rays for every light. Deterministic: equal specs give bit-identical buffers.

Coordinates: world space is y-up, the floor is ``y = 0``. Camera space follows OpenGL
(x right, y up, z towards the viewer; the camera looks along -z). ``depth`` is the
camera-space distance along the optical axis, ``-z_cam`` (positive).

Shading (Lambertian, linear space, per channel)::

    irradiance = ambient + sum_k light_color_k * intensity_k * falloff_k * max(0, n.l_k) * vis_k
    color      = albedo * irradiance                     (exactly, in float32)

where ``vis_k`` is 0 if a shadow ray towards light k hits any surface, ``falloff`` is 1 for
directional lights and ``(d0 / d)^2`` for point lights (``d0`` = distance from the light
to the camera target, so ``intensity`` is the irradiance it gives there). Display encoding
is :func:`tone_map` (clip + sRGB gamma). Nothing clips: the sampler budgets ambient + the
lights' irradiance at the target <= 1, and where a surface nearer to a point light still gets
more than 1, the camera's exposure scales all the light down until the brightest pixel is 1
(:attr:`RenderResult.exposure`, as a camera with auto-exposure would; ``color = albedo x
irradiance`` still holds exactly, and the encoded maps keep it). The map encodings
themselves (sRGB, ``(n+1)/2`` normals, near-bright min-max depth) are those of
:mod:`lumix_core.conventions`; this module only calls them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .. import conventions
from ..maps import RELEASE, MapSet
from .scene import PALETTE, Camera, Material, Plane, SceneSpec, Sphere, Surface

__all__ = [
    "RenderResult",
    "render",
    "tone_map",
    "encode_depth",
    "camera_basis",
    "pixel_rays",
    "project_to_pixels",
]

_EPS = 1e-6  # ray-parameter floor: ignores hits at the ray origin itself
_SHADOW_OFFSET = 1e-4  # shadow rays start this far off the surface to avoid self-shadow acne


# --------------------------------------------------------------------------- camera


def camera_basis(camera: Camera) -> np.ndarray:
    """Rows: camera right, up, back (= OpenGL camera axes x, y, z) in world coordinates."""
    forward = np.subtract(camera.target, camera.position).astype(np.float64)
    forward /= np.linalg.norm(forward)
    up_hint = np.array([0.0, 1.0, 0.0]) if abs(forward[1]) < 0.999 else np.array([0.0, 0.0, -1.0])
    right = np.cross(forward, up_hint)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return np.stack([right, up, -forward])


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return h, w


def _ndc(camera: Camera, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Image-plane coordinates of pixel centres at unit distance (x right, y up)."""
    tan_half = math.tan(math.radians(camera.fov_deg) / 2)
    xs = ((np.arange(w) + 0.5) / w * 2 - 1) * tan_half * (w / h)
    ys = (1 - (np.arange(h) + 0.5) / h * 2) * tan_half
    return np.meshgrid(xs, ys)


def pixel_rays(camera: Camera, size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """World-space origin ``[3]`` and unit directions ``[H*W, 3]`` through pixel centres
    (row-major, row 0 at the top)."""
    h, w = _size(size)
    gx, gy = _ndc(camera, h, w)
    basis = camera_basis(camera)
    dirs = gx.reshape(-1, 1) * basis[0] + gy.reshape(-1, 1) * basis[1] - basis[2]
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return np.asarray(camera.position, dtype=np.float64), dirs


def project_to_pixels(camera: Camera, points: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Continuous pixel coordinates ``[..., 2]`` as (row, col) of world points; pixel
    (i, j) has its centre at (i + 0.5, j + 0.5)."""
    h, w = _size(size)
    basis = camera_basis(camera)
    p = (np.asarray(points, dtype=np.float64) - np.asarray(camera.position)) @ basis.T
    tan_half = math.tan(math.radians(camera.fov_deg) / 2)
    x = p[..., 0] / -p[..., 2] / (tan_half * w / h)
    y = p[..., 1] / -p[..., 2] / tan_half
    return np.stack([(1 - y) / 2 * h, (x + 1) / 2 * w], axis=-1)


# --------------------------------------------------------------------------- ray casting


def _normalized(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation by ``yaw`` about the world's y axis; its columns are a yawed box's local axes in world coordinates."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _intersect(s: Surface, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Nearest ray parameter ``t > _EPS`` per ray (``inf`` where the ray misses)."""
    if isinstance(s, Sphere):
        oc = o - np.asarray(s.center)
        b = np.einsum("ij,ij->i", np.broadcast_to(oc, d.shape), d)
        c = np.einsum("ij,ij->i", np.broadcast_to(oc, d.shape), np.broadcast_to(oc, d.shape)) - s.radius ** 2
        disc = b * b - c
        sq = np.sqrt(np.maximum(disc, 0.0))
        t0, t1 = -b - sq, -b + sq
        t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
        return np.where(disc >= 0, t, np.inf)
    if isinstance(s, Plane):
        n = np.asarray(s.normal, dtype=np.float64)
        denom = d @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((np.asarray(s.point) - o) @ n) / denom
        return np.where((np.abs(denom) > 1e-12) & (t > _EPS), t, np.inf)
    rot = yaw_matrix(s.yaw)
    ol = (o - np.asarray(s.center)) @ rot
    dl = d @ rot
    dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
    half = np.asarray(s.half_size)
    t1 = (-half - ol) / dl
    t2 = (half - ol) / dl
    tn = np.minimum(t1, t2).max(axis=1)
    tf = np.maximum(t1, t2).min(axis=1)
    hit = (tn <= tf) & (tf > _EPS)
    return np.where(hit, np.where(tn > _EPS, tn, tf), np.inf)


def _normal_and_uv(s: Surface, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outward world normal and surface coordinates (u, v) in world units at points ``p``."""
    if isinstance(s, Sphere):
        q = p - np.asarray(s.center)
        n = q / np.linalg.norm(q, axis=1, keepdims=True)
        # Longitude seam at the back (-z), with an even segment count so it never shows.
        segments = max(2, 2 * round(math.pi * s.radius / s.material.scale))
        period = 2 * math.pi * s.radius / segments
        lon = np.arctan2(n[:, 0], n[:, 2])
        u = lon * s.radius * (s.material.scale / period)
        v = np.arcsin(np.clip(n[:, 1], -1.0, 1.0)) * s.radius
        return n, u, v
    if isinstance(s, Plane):
        n = np.broadcast_to(_normalized(s.normal), p.shape)
        a = np.array([0.0, 0.0, 1.0]) if abs(s.normal[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        t1 = np.cross(n[0], a)
        t1 /= np.linalg.norm(t1)
        t2 = np.cross(t1, n[0])
        q = p - np.asarray(s.point)
        return n, q @ t1, q @ t2
    rot = yaw_matrix(s.yaw)
    half = np.asarray(s.half_size)
    q = (p - np.asarray(s.center)) @ rot
    axis = np.argmax(np.abs(q) / half, axis=1)
    n_local = np.zeros_like(q)
    n_local[np.arange(len(q)), axis] = np.sign(q[np.arange(len(q)), axis])
    qs = q + half  # patterns start at a box corner
    u = np.where(axis == 0, qs[:, 2], qs[:, 0])
    v = np.where(axis == 1, qs[:, 2], qs[:, 1])
    return n_local @ rot.T, u, v


def _albedo_srgb(m: Material, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    c0 = np.asarray(PALETTE[m.colors[0]], dtype=np.float64)
    if m.kind == "flat":
        return np.broadcast_to(c0, (len(u), 3)).copy()
    c1 = np.asarray(PALETTE[m.colors[1]], dtype=np.float64)
    cells = np.floor(v / m.scale)
    if m.kind == "checker":
        cells = cells + np.floor(u / m.scale)
    second = (cells.astype(np.int64) % 2 == 1)[:, None]
    return np.where(second, c1, c0)


def _nearest(surfaces: Sequence[Surface], o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ts = np.stack([_intersect(s, o, d) for s in surfaces]) if surfaces else np.full((1, len(d)), np.inf)
    idx = np.argmin(ts, axis=0)
    t = ts[idx, np.arange(len(d))]
    return t, np.where(np.isfinite(t), idx, -1)


def _occluded(surfaces: Sequence[Surface], o: np.ndarray, d: np.ndarray, t_max: np.ndarray) -> np.ndarray:
    blocked = np.zeros(len(d), dtype=bool)
    for s in surfaces:
        blocked |= _intersect(s, o, d) < t_max
    return blocked


# --------------------------------------------------------------------------- encoding


def _np(x: torch.Tensor) -> np.ndarray:
    return x.numpy()


def tone_map(linear: np.ndarray) -> np.ndarray:
    """Display encoding of linear irradiance and color: clip to [0,1], then sRGB gamma.

    A plain clip rather than Reinhard keeps ``tone_map(albedo * irradiance)`` and the sRGB
    albedo in the same units, so the shading can still be recovered by division wherever
    nothing clipped (irradiance never exceeds 1: :func:`render`'s exposure).
    """
    x = torch.from_numpy(np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0))
    return _np(conventions.linear_to_srgb(x))


def encode_depth(z: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Camera-space depth ``z > 0`` ``[H, W]`` to the depth-map convention: near = bright,
    min-max normalised over ``valid`` pixels, i.e. ``(z_max - z) / (z_max - z_min)``.

    Linear in z (not disparity), so any affine fit in this space is an affine fit in z.
    Pixels without a surface encode as 0 (as far as the farthest surface).
    """
    z = np.asarray(z, dtype=np.float64)
    valid = np.isfinite(z) if valid is None else np.asarray(valid, dtype=bool) & np.isfinite(z)
    if not valid.any():
        return np.zeros_like(z)
    near_bright = -np.where(valid, z, z[valid].max())
    return _np(conventions.normalize_depth(torch.from_numpy(near_bright)[None]))[0].astype(np.float64)


# --------------------------------------------------------------------------- render


@dataclass
class RenderResult:
    """Raw float32 buffers of one render, ``[H, W, ...]``.

    ``albedo`` and ``irradiance`` are linear; ``color = albedo * irradiance`` exactly (before
    tone mapping). ``depth`` is camera-space distance along the optical axis (``inf`` where no
    surface is hit), ``position`` camera-space hit points (OpenGL, z < 0), ``normal`` unit
    camera-space normals facing the camera ((0, 0, 1) where nothing is hit), ``hit`` the
    coverage mask, ``object_id`` the index into ``spec.surfaces`` (-1: nothing hit).
    ``exposure`` (<= 1): the factor the lights were scaled by so that no irradiance exceeds 1.
    """

    spec: SceneSpec
    albedo: np.ndarray
    irradiance: np.ndarray
    color: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    position: np.ndarray
    hit: np.ndarray
    object_id: np.ndarray
    exposure: float = 1.0

    @property
    def caption(self) -> str:
        return self.spec.caption

    def encode(self, maps: "MapSet | str | Sequence[str] | None" = None) -> dict[str, np.ndarray]:
        """The display maps ``[H, W, 3]`` float32 in [0, 1], keyed by canonical map name in
        map-set order (default: the release order of :data:`lumix_core.maps.RELEASE`).

        albedo: sRGB; irradiance, color: :func:`tone_map`; depth: :func:`encode_depth`,
        replicated to 3 channels; normal: ``(n + 1) / 2``, OpenGL. Multiply by 255 and
        round for 8-bit files.
        """
        map_set = MapSet.parse(maps) if maps is not None else RELEASE
        depth = encode_depth(self.depth, self.hit)
        known = {
            "albedo": lambda: _np(conventions.linear_to_srgb(torch.from_numpy(self.albedo))),
            "irradiance": lambda: tone_map(self.irradiance),
            "color": lambda: tone_map(self.color),
            "depth": lambda: np.repeat(depth[..., None], 3, axis=-1),
            "normal": lambda: _np(conventions.vectors_to_normals(torch.from_numpy(self.normal))),
        }
        out: dict[str, np.ndarray] = {}
        for name in map_set.names:
            if name not in known:
                raise KeyError(f"the synthetic world renders {list(known)}, not '{name}'")
            out[name] = known[name]().astype(np.float32)
        return out


def render(spec: SceneSpec, size: int | tuple[int, int] = 64) -> RenderResult:
    """Ray-cast ``spec`` at ``size`` (int for square, or (H, W)); one ray per pixel centre."""
    h, w = _size(size)
    surfaces = spec.surfaces
    origin, dirs = pixel_rays(spec.camera, (h, w))
    t, ids = _nearest(surfaces, origin, dirs)
    hit = ids >= 0
    n_pix = h * w

    p = np.zeros((n_pix, 3))
    p[hit] = origin + dirs[hit] * t[hit, None]
    normal_w = np.zeros((n_pix, 3))
    albedo_srgb = np.zeros((n_pix, 3))
    for k, s in enumerate(surfaces):
        sel = ids == k
        if not sel.any():
            continue
        n, u, v = _normal_and_uv(s, p[sel])
        # Double-sided planes: the visible side's normal faces the camera.
        flip = np.einsum("ij,ij->i", n, dirs[sel]) > 0
        normal_w[sel] = np.where(flip[:, None], -n, n)
        albedo_srgb[sel] = _albedo_srgb(s.material, u, v)

    irr = np.zeros((n_pix, 3))
    irr[hit] = np.asarray(spec.ambient, dtype=np.float64)
    ph, nh = p[hit], normal_w[hit]
    for light in spec.lights:
        if light.kind == "directional":
            l = np.broadcast_to(_normalized(light.vector), ph.shape)
            dist = np.full(len(ph), np.inf)
            falloff = np.ones(len(ph))
        else:
            to_light = np.asarray(light.vector) - ph
            dist = np.linalg.norm(to_light, axis=1)
            l = to_light / dist[:, None]
            d0 = float(np.linalg.norm(np.subtract(light.vector, spec.camera.target)))
            falloff = (d0 / dist) ** 2
        cos = np.einsum("ij,ij->i", nh, l)
        lit = cos > 0
        vis = np.zeros(len(ph), dtype=bool)
        if lit.any():
            o = ph[lit] + _SHADOW_OFFSET * nh[lit]
            vis[lit] = ~_occluded(surfaces, o, np.ascontiguousarray(l[lit]), dist[lit])
        contrib = np.where(vis, cos * falloff * light.intensity, 0.0)
        irr[hit] += contrib[:, None] * np.asarray(light.color, dtype=np.float64)

    basis = camera_basis(spec.camera)
    p_cam = np.where(hit[:, None], (p - origin) @ basis.T, np.nan)
    n_cam = np.where(hit[:, None], normal_w @ basis.T, np.array([0.0, 0.0, 1.0]))
    n_cam /= np.linalg.norm(n_cam, axis=1, keepdims=True)
    depth = np.where(hit, -p_cam[:, 2], np.inf)

    albedo = _np(conventions.srgb_to_linear(torch.from_numpy(albedo_srgb))).astype(np.float32)
    peak = float(irr.max(initial=0.0))
    exposure = 1.0 / peak if peak > 1.0 else 1.0
    irradiance = np.minimum(irr * exposure, 1.0).astype(np.float32)  # min: float rounding only
    shape3 = (h, w, 3)
    return RenderResult(
        spec=spec,
        albedo=albedo.reshape(shape3),
        irradiance=irradiance.reshape(shape3),
        color=(albedo * irradiance).reshape(shape3),
        depth=depth.astype(np.float32).reshape(h, w),
        normal=n_cam.astype(np.float32).reshape(shape3),
        position=p_cam.astype(np.float32).reshape(shape3),
        hit=hit.reshape(h, w),
        object_id=ids.astype(np.int32).reshape(h, w),
        exposure=exposure,
    )
