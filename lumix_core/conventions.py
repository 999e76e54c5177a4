"""Map conventions: how every LumiX map is encoded for display, compositing and export.

Downstream tools (Nuke, Blender, Resolve) silently misread maps whose encoding they guess
wrong, so the encoding of each map is fixed here, in one place, and written into every
exported file (see :func:`conventions_metadata`).

Layout: images are ComfyUI ``IMAGE`` tensors ``[N, H, W, C]``, float, display range [0, 1].
The FLUX VAE decodes to [-1, 1]; :func:`finish_maps` / :func:`finish_map` are the one step
from decoded maps to display maps.

Per map:

* **albedo, color** -- sRGB-encoded, [0, 1], as decoded (clamped).
* **irradiance** -- the shading image as produced by the model, sRGB-encoded like the other
  8-bit training maps. For compositing maths (``color ~ albedo * irradiance``) convert both
  factors with :func:`srgb_to_linear`, multiply, and go back with :func:`linear_to_srgb`.
* **normal** -- unit vectors in *camera space*, encoded ``(n + 1) / 2``. OpenGL convention by
  default: X right, Y up, Z towards the camera (a surface facing the camera is (0, 0, 1),
  the usual light-blue normal map). The DirectX switch flips Y (Y down); nothing else.
  The decoder does not produce exact unit vectors: they are renormalised and the per-pixel
  deviation ``| |n| - 1 |`` is reported.
* **depth** -- relative (no metric scale), near = bright, one channel, min-max normalised
  per image (optionally between robust percentiles). The model's raw depth is taken as
  near = bright, the convention of the LumiX design. ``invert`` gives far = bright for tools
  that expect a Z-like pass; it is still relative, never metric.

May import: lumix_core.maps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .maps import RELEASE_MAPS, MapSet, canonical, check_group_batch

NORMAL_CONVENTIONS: tuple[str, ...] = ("opengl", "directx")
DEFAULT_NORMAL_CONVENTION = "opengl"

#: Normal vector assumed where the decoder produced (almost) no vector at all: facing the
#: camera, the least surprising direction for shading.
FALLBACK_NORMAL = (0.0, 0.0, 1.0)

#: Rec. 709 / sRGB luminance weights, for linear RGB.
LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)

#: Human-readable encoding of each released map (written into exported files).
MAP_ENCODINGS: dict[str, str] = {
    "albedo": "sRGB-encoded diffuse reflectance, [0,1]",
    "irradiance": "diffuse shading as produced by the model, sRGB-encoded, [0,1]; "
    "linearise with the sRGB EOTF before multiplying with linear albedo",
    "color": "sRGB image, [0,1]",
    "depth": "relative depth (no metric scale), one channel, min-max normalised per image",
    "normal": "unit vectors in camera space, encoded (n+1)/2; X right, Z towards the camera",
}
assert set(MAP_ENCODINGS) == set(RELEASE_MAPS), "MAP_ENCODINGS must cover exactly the released maps"


# ----------------------------------------------------------------------------- validation
def check_image(x: Any, what: str, channels: Optional[Sequence[int]] = None) -> Tensor:
    """Return ``x`` as a float ``[N, H, W, C]`` tensor or raise a clear error.

    ``what`` names the input in the message (e.g. ``"albedo"``); ``channels`` lists the
    accepted channel counts.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{what}: expected a torch tensor [N,H,W,C], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{what}: expected an image batch [N,H,W,C], got shape {tuple(x.shape)}")
    if min(x.shape) == 0:
        raise ValueError(f"{what}: empty image batch, shape {tuple(x.shape)}")
    if channels is not None and x.shape[-1] not in channels:
        raise ValueError(
            f"{what}: expected {' or '.join(map(str, channels))} channels in the last dimension "
            f"(ComfyUI layout [N,H,W,C]), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{what}: expected a float image in [0,1] (ComfyUI IMAGE), got dtype {x.dtype}; "
            "convert 8-bit data with x.float() / 255"
        )
    return x


def require_finite(x: Tensor, what: str, fix: str, item: Callable[[int], str] = lambda i: f"item {i}") -> Tensor:
    """Refuse NaN/inf values in ``x`` (batch first), naming where the first one is and what to do.

    Why refuse, not clean: a non-finite pixel or latent value spreads silently -- through the VAE
    to its patch, through attention to every map of the scene -- and ends as black PNGs and NaN
    EXRs. Stopping where it enters names the node that produced it.
    """
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    per_item = (~finite).reshape(x.shape[0], -1).sum(dim=1)
    first = int(torch.nonzero(per_item)[0, 0])
    raise ValueError(f"{what} holds {int(per_item.sum())} NaN/inf value(s) of {x.numel()} (first in "
                     f"{item(first)}); {fix}")


def check_same_size(images: Mapping[str, Tensor]) -> tuple[int, int, int]:
    """Check that all images share ``N, H, W`` (maps of one scene are pixel-aligned)."""
    sizes = {name: tuple(t.shape[:3]) for name, t in images.items()}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise ValueError(f"maps must have the same batch size and resolution [N,H,W]; got {listing}")
    return next(iter(sizes.values()))


def rgb(x: Tensor) -> Tensor:
    """First three channels of an image (grey images are repeated to RGB, alpha dropped)."""
    if x.shape[-1] == 1:
        return x.expand(*x.shape[:-1], 3)
    return x[..., :3]


def single_channel(x: Tensor) -> Tensor:
    """``[N,H,W]`` from an ``[N,H,W]`` or ``[N,H,W,C]`` map: mean of the colour channels.

    The VAE decodes a grey map into three slightly different channels; their mean is the
    least noisy single-channel estimate.
    """
    if x.dim() == 3:
        return x
    if x.dim() == 4:
        return rgb(x).mean(dim=-1) if x.shape[-1] != 1 else x[..., 0]
    raise ValueError(f"expected [N,H,W] or [N,H,W,C], got shape {tuple(x.shape)}")


def check_normal_convention(convention: str) -> str:
    """Canonical spelling ("opengl" / "directx") of a normal convention, or a clear error."""
    key = str(convention).strip().lower()
    if key not in NORMAL_CONVENTIONS:
        raise ValueError(f"normal convention must be one of {list(NORMAL_CONVENTIONS)}, got {convention!r}")
    return key


# ----------------------------------------------------------------------------- colour
def srgb_to_linear(x: Tensor) -> Tensor:
    """sRGB EOTF (IEC 61966-2-1): encoded [0,1] -> linear light. Use before any maths on light."""
    x = x.clamp(min=0.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(y: Tensor) -> Tensor:
    """Inverse of :func:`srgb_to_linear`: linear light -> sRGB-encoded values."""
    y = y.clamp(min=0.0)
    return torch.where(y <= 0.0031308, y * 12.92, 1.055 * y ** (1.0 / 2.4) - 0.055)


def luminance(linear_rgb: Tensor) -> Tensor:
    """Luminance ``[...]`` of linear RGB ``[..., 3]`` (Rec. 709 weights)."""
    w = torch.tensor(LUMA_WEIGHTS, dtype=linear_rgb.dtype, device=linear_rgb.device)
    return (linear_rgb[..., :3] * w).sum(dim=-1)


def decoded_to_display(decoded: Tensor) -> Tensor:
    """VAE output in [-1, 1] -> display range [0, 1] (clamped)."""
    return ((decoded + 1.0) * 0.5).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- normals
def flip_normal_y(encoded: Tensor) -> Tensor:
    """Switch an encoded normal map between OpenGL (Y up) and DirectX (Y down).

    Only the green channel changes: ``g -> 1 - g`` (i.e. ``n_y -> -n_y``). The switch is its
    own inverse.
    """
    out = encoded.clone()
    out[..., 1] = 1.0 - out[..., 1]
    return out


def renormalize_normals(encoded: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Encoded normals ``[..., 3]`` -> (unit normals re-encoded ``(n+1)/2``, deviation ``[...]``).

    The deviation ``| |2e-1| - 1 |`` says how far the decoder's vectors were from unit length
    (0 = exact). Vectors shorter than ``eps`` carry no direction; they become
    :data:`FALLBACK_NORMAL` (deviation 1).
    """
    n = encoded[..., :3] * 2.0 - 1.0
    length = n.norm(dim=-1)
    deviation = (length - 1.0).abs()
    fallback = torch.tensor(FALLBACK_NORMAL, dtype=n.dtype, device=n.device)
    unit = torch.where((length > eps).unsqueeze(-1), n / length.clamp(min=eps).unsqueeze(-1), fallback)
    return (unit + 1.0) * 0.5, deviation


def normals_to_vectors(encoded: Tensor, convention: str = DEFAULT_NORMAL_CONVENTION) -> Tensor:
    """Encoded normal map (``convention``) -> unit vectors in OpenGL camera space ``[..., 3]``.

    All maths in this package (relighting, consistency) works in the OpenGL frame.
    """
    convention = check_normal_convention(convention)
    unit, _ = renormalize_normals(encoded)
    n = unit * 2.0 - 1.0
    if convention == "directx":
        n = n * torch.tensor([1.0, -1.0, 1.0], dtype=n.dtype, device=n.device)
    return n


def vectors_to_normals(vectors: Tensor, convention: str = DEFAULT_NORMAL_CONVENTION) -> Tensor:
    """Unit vectors in OpenGL camera space -> encoded normal map in ``convention``."""
    convention = check_normal_convention(convention)
    encoded = ((vectors + 1.0) * 0.5).clamp(0.0, 1.0)
    return flip_normal_y(encoded) if convention == "directx" else encoded


# ----------------------------------------------------------------------------- depth
def _quantile_per_image(x: Tensor, q: float) -> Tensor:
    """Per-image quantile of ``[N, P]`` (kthvalue: no size limit, unlike torch.quantile)."""
    count = x.shape[1]
    k = min(count, max(1, int(round(q / 100.0 * (count - 1))) + 1))
    return x.kthvalue(k, dim=1).values


def normalize_depth(
    depth: Tensor,
    percentiles: Optional[tuple[float, float]] = None,
    invert: bool = False,
    eps: float = 1e-8,
) -> Tensor:
    """Per-image min-max normalisation of a near-bright depth ``[N,H,W]`` to [0, 1].

    ``percentiles=(lo, hi)`` maps the lo-th/hi-th percentile to 0/1 and clips, so a few
    outlier pixels (sky, speckles) do not squash the range. ``invert`` returns far = bright.
    A flat map (no depth variation) has no relative information and becomes 0.
    """
    if depth.dim() != 3:
        raise ValueError(f"depth: expected [N,H,W], got shape {tuple(depth.shape)}")
    flat = depth.reshape(depth.shape[0], -1).float()
    if percentiles is None:
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    else:
        p_lo, p_hi = (float(p) for p in percentiles)
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise ValueError(f"depth percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles}")
        lo, hi = _quantile_per_image(flat, p_lo), _quantile_per_image(flat, p_hi)
    span = hi - lo
    ok = span > eps
    scale = torch.where(ok, 1.0 / span.clamp(min=eps), torch.zeros_like(span))
    out = ((depth.float() - lo.view(-1, 1, 1)) * scale.view(-1, 1, 1)).clamp(0.0, 1.0)
    if invert:
        out = torch.where(ok.view(-1, 1, 1), 1.0 - out, out)
    return out


def depth_to_image(depth: Tensor) -> Tensor:
    """Single-channel depth ``[N,H,W]`` -> grey 3-channel IMAGE ``[N,H,W,3]``."""
    return depth.unsqueeze(-1).repeat(1, 1, 1, 3)


# ----------------------------------------------------------------------------- finishing
@dataclass
class FinishedMap:
    """One map ready for display and compositing.

    ``image``: ``[N,H,W,3]`` display IMAGE. ``mask``: ``[N,H,W]`` single channel (depth only,
    a ComfyUI MASK). ``deviation``: ``[N,H,W]`` unit-length deviation (normal only).
    ``info``: small JSON-able numbers about the step (e.g. mean normal deviation).
    """

    name: str
    image: Tensor
    mask: Optional[Tensor] = None
    deviation: Optional[Tensor] = None
    info: dict[str, float] = field(default_factory=dict)


def finish_map(
    name: str,
    img01: Tensor,
    *,
    normal_convention: str = DEFAULT_NORMAL_CONVENTION,
    depth_percentiles: Optional[tuple[float, float]] = None,
    depth_invert: bool = False,
) -> FinishedMap:
    """Apply the conventions of map ``name`` to a display-range map ``img01`` ``[N,H,W,C]``.

    * normal: renormalised to unit vectors (deviation kept), converted to ``normal_convention``
      (the model's raw output is read as OpenGL).
    * depth: one channel, normalised per image (see :func:`normalize_depth`), plus a grey IMAGE.
    * albedo, irradiance, color and maps of custom map sets: clamped to [0, 1].
    """
    key = canonical(name)
    img = check_image(img01, key, channels=(1, 3, 4))
    if key == "normal":
        if img.shape[-1] < 3:
            raise ValueError(f"normal: expected 3 channels (X, Y, Z), got shape {tuple(img.shape)}")
        encoded, deviation = renormalize_normals(img.clamp(0.0, 1.0))
        if check_normal_convention(normal_convention) == "directx":
            encoded = flip_normal_y(encoded)
        info = {"normal_deviation_mean": float(deviation.mean()), "normal_deviation_max": float(deviation.max())}
        return FinishedMap(key, encoded, deviation=deviation, info=info)
    if key == "depth":
        depth = normalize_depth(single_channel(img.clamp(0.0, 1.0)), depth_percentiles, depth_invert)
        return FinishedMap(key, depth_to_image(depth), mask=depth)
    return FinishedMap(key, rgb(img).clamp(0.0, 1.0))


def finish_maps(decoded: Mapping[str, Tensor], **options: Any) -> dict[str, FinishedMap]:
    """Decoded maps in [-1, 1] (name -> ``[N,H,W,C]``) -> finished maps (see :func:`finish_map`)."""
    if not decoded:
        raise ValueError("finish_maps: no maps given")
    return {canonical(k): finish_map(k, decoded_to_display(check_image(v, k)), **options) for k, v in decoded.items()}


def split_groups(images: Tensor, mapset: "MapSet | str | Sequence[str] | None" = None) -> dict[str, Tensor]:
    """Split a decoded batch ``[N*M, H, W, C]`` of consecutive scene groups into maps.

    Returns ``{map name: [N, H, W, C]}`` in map-set order; item ``g*M + i`` is map ``i`` of
    scene ``g``.
    """
    ms = MapSet.parse(mapset)
    images = check_image(images, "image batch")
    check_group_batch(images.shape[0], len(ms), "image batch")
    m = len(ms)
    return {name: images[i::m].contiguous() for i, name in enumerate(ms.names)}


def conventions_metadata(
    normal_convention: str = DEFAULT_NORMAL_CONVENTION,
    depth_invert: bool = False,
    depth_percentiles: Optional[tuple[float, float]] = None,
) -> dict[str, Any]:
    """JSON-able description of the conventions, written into exported files."""
    convention = check_normal_convention(normal_convention)
    frame = "OpenGL: X right, Y up, Z towards the camera" if convention == "opengl" else (
        "DirectX: X right, Y down, Z towards the camera"
    )
    normalisation = "min-max" if depth_percentiles is None else (
        f"percentiles {depth_percentiles[0]:g}-{depth_percentiles[1]:g}, clipped"
    )
    return {
        "layout": "pixel-aligned maps of one scene; display values in [0,1]",
        "maps": dict(MAP_ENCODINGS),
        "normal_convention": convention,
        "normal_frame": frame,
        "depth_polarity": "far = bright" if depth_invert else "near = bright",
        "depth_normalisation": normalisation,
    }
