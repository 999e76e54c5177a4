"""Scenes of the synthetic intrinsic world: what is in them, how they are sampled, captioned.

Why separate from rendering: the scene description is what the captions, the text
encoder's vocabulary and the dataset manifest depend on; the ray caster
(:mod:`lumix_core.world.render`) only consumes it.

A scene is 1-3 spheres and boxes standing on an infinite floor plane (``y = 0``, world
space y-up), optionally in front of a back wall, lit by ambient light plus 1-3 lights
(the brightest one a point light, a lamp to one side; the others directional or point lights), seen by a pinhole
camera. Albedo comes from a small named palette, flat or as a two-colour checker/stripe
pattern. Captions follow one small grammar (see :func:`caption`), so every word they can
contain is known (:func:`caption_vocabulary`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, Sequence, Union

import numpy as np

__all__ = [
    "PALETTE",
    "FOV_RANGE_DEG",
    "FLOOR_COLORS",
    "LIGHT_WORDS",
    "MAIN_LIGHT_DISTANCE",
    "Vec3",
    "Material",
    "Sphere",
    "Box",
    "Plane",
    "Light",
    "Camera",
    "Surface",
    "SceneSpec",
    "sample_scene",
    "caption",
    "caption_tokens",
    "caption_vocabulary",
    "describe_surface",
    "direction_to_light",
    "light_direction_word",
    "main_light",
    "main_light_word",
    "mirror_main_light",
]

Vec3 = tuple[float, float, float]

#: Range of the cameras' vertical field of view (uniform draw per scene), degrees.
FOV_RANGE_DEG: tuple[float, float] = (38.0, 55.0)

#: Named albedo colours, sRGB in [0,1]. Names are caption words, so keep them plain.
PALETTE: dict[str, Vec3] = {
    "red": (0.80, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.10),
    "yellow": (0.95, 0.85, 0.15),
    "green": (0.15, 0.62, 0.20),
    "blue": (0.12, 0.30, 0.85),
    "purple": (0.50, 0.20, 0.70),
    "pink": (0.95, 0.55, 0.70),
    "brown": (0.50, 0.30, 0.15),
    "white": (0.92, 0.92, 0.90),
    "gray": (0.50, 0.50, 0.50),
    "black": (0.08, 0.08, 0.08),
}

#: Colours that floors and walls take (muted, so objects stand out).
FLOOR_COLORS: tuple[str, ...] = ("gray", "white", "brown", "black")

#: Words for the main light's direction, as they appear after "light from".
LIGHT_WORDS: dict[str, str] = {
    "left": "the left",
    "right": "the right",
    "above": "above",
    "front": "the front",
    "behind": "behind",
}

_TEXTURE_WORDS = {"flat": "", "checker": "checkered", "stripes": "striped"}
_SHAPE_WORDS = ("sphere", "box")
_CAPTION_GLUE = ("a", "an", "and", "on", "in", "front", "of", "floor", "wall", "light", "from")


# --------------------------------------------------------------------------- scene spec


@dataclass(frozen=True)
class Material:
    """Albedo pattern of a surface: one flat palette colour, or a two-colour checker or
    stripe pattern with period ``scale`` (world units, measured along the surface)."""

    colors: tuple[str, ...]
    kind: Literal["flat", "checker", "stripes"] = "flat"
    scale: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in _TEXTURE_WORDS:
            raise ValueError(f"unknown material kind {self.kind!r}; use one of {list(_TEXTURE_WORDS)}")
        need = 1 if self.kind == "flat" else 2
        if len(self.colors) != need:
            raise ValueError(f"a {self.kind} material needs {need} colour(s), got {self.colors}")
        for c in self.colors:
            if c not in PALETTE:
                raise ValueError(f"unknown colour {c!r}; the palette is {list(PALETTE)}")
        if self.scale <= 0:
            raise ValueError(f"texture scale must be > 0, got {self.scale}")


@dataclass(frozen=True)
class Sphere:
    center: Vec3
    radius: float
    material: Material
    shape: str = field(default="sphere", init=False)


@dataclass(frozen=True)
class Box:
    """A box with half extents ``half_size``, rotated by ``yaw`` radians about world y."""

    center: Vec3
    half_size: Vec3
    material: Material
    yaw: float = 0.0
    shape: str = field(default="box", init=False)


@dataclass(frozen=True)
class Plane:
    """An infinite, double-sided plane; ``role`` ('floor' or 'wall') names it in captions."""

    point: Vec3
    normal: Vec3
    material: Material
    role: Literal["floor", "wall"] = "floor"
    shape: str = field(default="plane", init=False)


@dataclass(frozen=True)
class Light:
    """A directional light (``vector`` = unit direction *towards* the light) or a point
    light (``vector`` = position). ``color`` has max channel 1; ``intensity`` scales it:
    the irradiance the light gives a surface facing it (for a point light: at the distance
    of the camera target; it falls off with the inverse square of the distance)."""

    kind: Literal["directional", "point"]
    vector: Vec3
    color: Vec3 = (1.0, 1.0, 1.0)
    intensity: float = 0.7


@dataclass(frozen=True)
class Camera:
    """Pinhole camera looking from ``position`` at ``target``; ``fov_deg`` is vertical."""

    position: Vec3
    target: Vec3
    fov_deg: float = 45.0


Surface = Union[Sphere, Box, Plane]


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render a scene; equal specs render bit-identical buffers."""

    objects: tuple[Union[Sphere, Box], ...]
    floor: Plane
    lights: tuple[Light, ...]
    camera: Camera
    ambient: Vec3 = (0.2, 0.2, 0.2)
    wall: Plane | None = None
    seed: int | None = None

    @property
    def surfaces(self) -> tuple[Surface, ...]:
        """All surfaces in ``RenderResult.object_id`` order: objects, floor, then wall."""
        return tuple(self.objects) + (self.floor,) + ((self.wall,) if self.wall is not None else ())

    @property
    def caption(self) -> str:
        return caption(self)

    def to_dict(self) -> dict:
        """Plain-JSON form (for ground-truth files), so a scene can be re-rendered later."""
        return asdict(self)


# --------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _material_phrase(m: Material) -> str:
    if m.kind == "flat":
        return m.colors[0]
    return f"{m.colors[0]} and {m.colors[1]} {_TEXTURE_WORDS[m.kind]}"


def describe_surface(s: Surface) -> str:
    """Noun phrase for one surface, e.g. 'a red sphere', 'a gray and white checkered floor'."""
    noun = s.role if isinstance(s, Plane) else s.shape
    phrase = f"{_material_phrase(s.material)} {noun}"
    return f"{_article(phrase)} {phrase}"


def _horizontal_frame(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """The viewer's right and towards-viewer directions, flattened onto the floor."""
    forward = np.subtract(camera.target, camera.position).astype(np.float64)
    forward[1] = 0.0
    if np.linalg.norm(forward) < 1e-9:  # looking straight down: image up = world -z
        forward = np.array([0.0, 0.0, -1.0])
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    return right / np.linalg.norm(right), -forward


def light_direction_word(direction: Sequence[float], camera: Camera) -> str:
    """Which way light comes from, as the viewer sees it: the dominant component of the
    direction towards the light in (viewer right, world up, towards viewer)."""
    d = np.asarray(direction, dtype=np.float64)
    right, back = _horizontal_frame(camera)
    comps = np.array([d @ right, d[1], d @ back])
    axis = int(np.argmax(np.abs(comps)))
    if axis == 0:
        return "right" if comps[0] > 0 else "left"
    if axis == 1:
        if comps[1] <= 0:
            raise ValueError(f"light direction {tuple(d)} points below the floor")
        return "above"
    return "front" if comps[2] > 0 else "behind"


def direction_to_light(light: Light, camera: Camera) -> np.ndarray:
    """Unit vector from the camera target towards ``light`` (a point light's position seen from
    the target; a directional light's own direction)."""
    if light.kind == "directional":
        d = np.asarray(light.vector, dtype=np.float64)
    else:
        d = np.subtract(light.vector, camera.target).astype(np.float64)
    return d / np.linalg.norm(d)


def main_light(spec: SceneSpec) -> Light:
    """The brightest light (by intensity x mean colour at the camera target)."""
    return max(spec.lights, key=lambda l: l.intensity * float(np.mean(l.color)))


def main_light_word(spec: SceneSpec) -> str:
    """The caption's "light from ..." word of ``spec`` (its main light's direction)."""
    return light_direction_word(direction_to_light(main_light(spec), spec.camera), spec.camera)


def mirror_main_light(spec: SceneSpec) -> SceneSpec:
    """``spec`` with its main light reflected left <-> right about the camera's vertical plane
    through its target; everything else unchanged. The world's own answer to "light from the
    left vs from the right, same scene" (the caption-following check scored on ground truth)."""
    light = main_light(spec)
    right, _ = _horizontal_frame(spec.camera)
    if light.kind == "directional":
        v = np.asarray(light.vector, dtype=np.float64)
        v = v - 2.0 * float(v @ right) * right
    else:
        target = np.asarray(spec.camera.target, dtype=np.float64)
        offset = np.asarray(light.vector, dtype=np.float64) - target
        v = target + offset - 2.0 * float(offset @ right) * right
    mirrored = replace(light, vector=tuple(float(x) for x in v))
    return replace(spec, lights=tuple(mirrored if l is light else l for l in spec.lights))


def caption(spec: SceneSpec) -> str:
    """Caption from the scene grammar::

        <object> [, <object>] [and <object>] on <floor> [in front of <wall>], light from <dir>

    Objects are listed left to right as seen in the image.
    """
    cam = spec.camera
    right, _ = _horizontal_frame(cam)
    objs = sorted(spec.objects, key=lambda o: float(np.dot(o.center, right)))
    parts = [describe_surface(o) for o in objs]
    if not parts:
        listed = describe_surface(spec.floor)
        text = listed
    else:
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        text = f"{listed} on {describe_surface(spec.floor)}"
    if spec.wall is not None:
        text += f" in front of {describe_surface(spec.wall)}"
    word = light_direction_word(direction_to_light(main_light(spec), cam), cam)
    return f"{text}, light from {LIGHT_WORDS[word]}"


def caption_tokens(text: str) -> list[str]:
    """Lower-case words of a caption (punctuation dropped): the text encoder's tokens."""
    return [w for w in "".join(c if c.isalpha() else " " for c in text.lower()).split() if w]


def caption_vocabulary() -> list[str]:
    """Every word the caption grammar can produce, sorted (for a tiny text encoder)."""
    words = set(_CAPTION_GLUE) | set(PALETTE) | set(_SHAPE_WORDS)
    words |= {w for w in _TEXTURE_WORDS.values() if w}
    for phrase in LIGHT_WORDS.values():
        words |= set(caption_tokens(phrase))
    return sorted(words)


# --------------------------------------------------------------------------- sampling


def _unit(v: Sequence[float]) -> Vec3:
    a = np.asarray(v, dtype=np.float64)
    a = a / np.linalg.norm(a)
    return (float(a[0]), float(a[1]), float(a[2]))


def _sample_material(rng: np.random.Generator, colors: Sequence[str], p_flat: float,
                     kinds: Sequence[str], scale: tuple[float, float], avoid: str | None = None) -> Material:
    """First colour from ``colors`` (not ``avoid``), second one (for patterns) also from
    ``colors``, so floors and walls stay muted while objects use the whole palette."""
    choices = [c for c in colors if c != avoid] or list(colors)
    first = str(rng.choice(choices))
    if rng.random() < p_flat:
        return Material((first,), "flat")
    second = str(rng.choice([c for c in colors if c != first]))
    return Material((first, second), str(rng.choice(list(kinds))), float(rng.uniform(*scale)))


_LIGHT_COLORS: tuple[Vec3, ...] = ((1.0, 1.0, 1.0), (1.0, 0.9, 0.75), (0.8, 0.9, 1.0))


def _sample_main_direction(rng: np.random.Generator, word: str, has_wall: bool) -> Vec3:
    """A direction towards the light whose dominant axis is ``word``, with a margin so that
    :func:`light_direction_word` classifies it unambiguously (camera has zero yaw)."""
    zmin = 0.1 if has_wall else -0.3  # a wall would shadow light coming from behind it
    if word in ("left", "right"):
        x = -1.0 if word == "left" else 1.0
        return _unit((x, rng.uniform(0.35, 0.8), rng.uniform(max(zmin, 0.1), 0.6)))
    if word == "above":
        return _unit((rng.uniform(-0.45, 0.45), 1.0, rng.uniform(0.05, 0.5)))
    if word == "front":
        return _unit((rng.uniform(-0.45, 0.45), rng.uniform(0.45, 0.8), 1.0))
    return _unit((rng.uniform(-0.45, 0.45), rng.uniform(0.45, 0.8), -1.0))  # behind


def sample_scene(seed: int) -> SceneSpec:
    """A random scene, fully determined by ``seed``.

    Objects (1-3 spheres/boxes) stand on the floor in separate left-to-right slots of the
    visible width, so none hides another completely and the caption names only what is
    seen. Without a back wall the camera looks down steeply enough that the floor fills
    the frame; with one the wall fills the top: every pixel hits a surface.
    """
    rng = np.random.default_rng(seed)
    has_wall = bool(rng.random() < 0.5)
    fov = float(rng.uniform(*FOV_RANGE_DEG))
    dist = float(rng.uniform(4.0, 5.5))
    if has_wall:
        pitch = math.radians(rng.uniform(12.0, 28.0))
    else:
        pitch = math.radians(fov / 2 + rng.uniform(12.0, 24.0))
    target = (float(rng.uniform(-0.15, 0.15)), float(rng.uniform(0.25, 0.45)), 0.0)
    position = (target[0], target[1] + dist * math.sin(pitch), dist * math.cos(pitch))
    camera = Camera(position, target, fov)

    floor_mat = _sample_material(rng, FLOOR_COLORS, 0.6, ("checker", "checker", "stripes"), (0.5, 1.0))
    floor = Plane((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), floor_mat, "floor")
    wall = None
    if has_wall:
        wall_mat = _sample_material(rng, FLOOR_COLORS, 0.8, ("stripes",), (0.4, 0.8), avoid=floor_mat.colors[0])
        wall = Plane((0.0, 0.0, -float(rng.uniform(1.5, 2.5))), (0.0, 0.0, 1.0), wall_mat, "wall")

    n_obj = int(rng.integers(1, 4))
    half_width = 0.7 * dist * math.tan(math.radians(fov) / 2)
    slot = 2 * half_width / n_obj
    objects: list[Union[Sphere, Box]] = []
    for k in range(n_obj):
        x = target[0] - half_width + slot * (k + 0.5) + rng.uniform(-0.1, 0.1) * slot
        z = float(rng.uniform(-0.6, 0.6))
        max_r = min(0.55, 0.42 * slot)
        mat = _sample_material(rng, list(PALETTE), 0.6, ("checker", "stripes"), (0.15, 0.3),
                               avoid=floor_mat.colors[0])
        if rng.random() < 0.5:
            r = float(rng.uniform(0.55, 1.0) * max_r)
            objects.append(Sphere((float(x), r, z), r, mat))
        else:
            hx, hz = (float(v) for v in rng.uniform(0.45, 0.7, size=2) * max_r)
            hy = float(rng.uniform(0.5, 1.1) * max_r)
            objects.append(Box((float(x), hy, z), (hx, hy, hz), mat, float(rng.uniform(-0.7, 0.7))))

    # Light budget: ambient + the peak of every light <= 1, so irradiance (almost) never clips.
    ambient_level = float(rng.uniform(0.12, 0.3))
    ambient = tuple(float(ambient_level * c) for c in _LIGHT_COLORS[int(rng.integers(3))])
    budget = 1.0 - ambient_level
    n_lights = int(rng.integers(1, 4))
    words = [w for w in LIGHT_WORDS if has_wall is False or w != "behind"]
    word = str(rng.choice(words))
    main_i = budget * float(rng.uniform(0.55, 0.85)) if n_lights > 1 else budget * float(rng.uniform(0.6, 1.0))
    # The main light is a lamp MAIN_LIGHT_DISTANCE from the target, in the caption's direction: its
    # inverse-square falloff lights its own side of the floor, so "light from the left" shows in the
    # left half of the irradiance (a directional light gives a floor the same n.l from either side).
    direction = _sample_main_direction(rng, word, has_wall)
    position = tuple(float(t + MAIN_LIGHT_DISTANCE * v) for t, v in zip(target, direction))
    lights = [Light("point", position, _sample_light_color(rng), main_i)]
    rest = budget - main_i
    for _ in range(n_lights - 1):
        # Secondary lights stay well below the main one so the caption's direction holds.
        peak = min(0.6 * main_i, rest * float(rng.uniform(0.3, 0.9)) / (n_lights - 1))
        direction = _unit((rng.uniform(-1, 1), rng.uniform(0.5, 1.0), rng.uniform(0.1 if has_wall else -1, 1)))
        color = _sample_light_color(rng)
        if rng.random() < 0.4:
            lights.append(_point_light(rng, direction, peak, color, target, wall))
        else:
            lights.append(Light("directional", direction, color, peak))
    return SceneSpec(tuple(objects), floor, tuple(lights), camera, ambient, wall, int(seed))


def _sample_light_color(rng: np.random.Generator) -> Vec3:
    return _LIGHT_COLORS[int(rng.integers(len(_LIGHT_COLORS)))]


_OBJECT_TOP = 1.25  # no sampled object reaches higher than this (y)
#: Distance of the main light (a point light) from the camera target. At 4 units the truth's
#: left half is brighter under "light from the left" than under "from the right" in every
#: held-out scene (experiments/world_limits/run.py). Surfaces nearer the lamp get more light
#: than the target; :func:`lumix_core.world.render.render`'s exposure keeps them from clipping.
MAIN_LIGHT_DISTANCE = 4.0


def _point_light(rng: np.random.Generator, direction: Vec3, peak: float, color: Vec3, target: Vec3,
                 wall: Plane | None) -> Light:
    """A point light 3-5 units from the target along ``direction``, dimmed so that its
    irradiance on the nearest surface it can reach is at most ``peak`` (inverse-square
    falloff would otherwise blow out the floor right under it)."""
    d0 = float(rng.uniform(3.0, 5.0))
    pos = tuple(float(t + d0 * v) for t, v in zip(target, direction))
    nearest = pos[1] - _OBJECT_TOP
    if wall is not None:
        nearest = min(nearest, pos[2] - wall.point[2])
    nearest = max(nearest, 0.5)
    return Light("point", pos, color, float(peak * (nearest / d0) ** 2))
