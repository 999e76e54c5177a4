"""The map set: names, aliases, the released order and the query-source map.

This module is the single place that knows which maps exist and in which order they
sit inside a scene group. Everything else (Tensor LoRA shapes, latent layout, node
outputs, checkpoint metadata, training data) imports it.

May import: nothing from lumix_core.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: Released LumiX order: index = position of a map inside a scene group.
RELEASE_MAPS: tuple[str, ...] = ("albedo", "irradiance", "color", "depth", "normal")

#: The map whose queries every map of a scene attends with (Query-Broadcast Attention).
QUERY_SOURCE: str = "color"

#: Names used by the release / Hypersim for the same maps.
ALIASES: dict[str, str] = {
    "diffuse_reflectance": "albedo",
    "diffuse_illumination": "irradiance",
    "rgb": "color",
    "image": "color",
    "normals": "normal",
    "shading": "irradiance",
}

#: Folder / file-name spelling of each canonical map in the release's training data.
RELEASE_FOLDER_NAMES: dict[str, str] = {
    "albedo": "diffuse_reflectance",
    "irradiance": "diffuse_illumination",
    "color": "color",
    "depth": "depth",
    "normal": "normal",
}


def canonical(name: str) -> str:
    """Canonical spelling of a map name (lower case, aliases resolved)."""
    key = name.strip().lower()
    if not key:
        raise ValueError("empty map name")
    return ALIASES.get(key, key)


@dataclass(frozen=True)
class MapSet:
    """An ordered set of maps that form one scene group of size ``M``.

    The order is the order of maps inside a group in every batch and in every adapter
    tensor (G1 is ``[M, M, R]`` indexed by these positions).
    """

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        names = tuple(canonical(n) for n in self.names)
        if len(set(names)) != len(names):
            raise ValueError(f"map set has duplicate maps: {list(names)}")
        if QUERY_SOURCE not in names:
            raise ValueError(
                f"map set {list(names)} has no '{QUERY_SOURCE}' map; it is the query source of "
                "Query-Broadcast Attention and must be part of every map set"
            )
        object.__setattr__(self, "names", names)

    @classmethod
    def parse(cls, spec: "str | Sequence[str] | MapSet | None") -> "MapSet":
        """Build a map set from ``"albedo,color,depth"``, a list of names, or None (release)."""
        if spec is None:
            return RELEASE
        if isinstance(spec, MapSet):
            return spec
        if isinstance(spec, str):
            spec = [s for s in spec.replace(";", ",").split(",") if s.strip()]
        return cls(tuple(spec))

    @property
    def size(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def index(self, name: str) -> int:
        key = canonical(name)
        try:
            return self.names.index(key)
        except ValueError:
            raise KeyError(f"map '{name}' is not in the map set {list(self.names)}") from None

    @property
    def query_index(self) -> int:
        """Position of the query-source (color) map inside a group."""
        return self.names.index(QUERY_SOURCE)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical(name) in self.names

    def to_string(self) -> str:
        return ",".join(self.names)

    def folder_name(self, name: str) -> str:
        """Folder name used by the release's dataset layout (e.g. ``diffuse_reflectance``)."""
        key = canonical(name)
        return RELEASE_FOLDER_NAMES.get(key, key)


RELEASE = MapSet(RELEASE_MAPS)


def check_group_batch(batch: int, group: int, what: str = "batch") -> int:
    """Return the number of scene groups in ``batch`` or raise a clear error."""
    if group < 1:
        raise ValueError(f"group size must be >= 1, got {group}")
    if batch % group != 0:
        raise ValueError(
            f"{what} of {batch} is not a multiple of the map count {group}: LumiX needs whole "
            f"scenes of {group} maps laid out consecutively (use the LumiX latent nodes, or a "
            f"batch size that is a multiple of {group})"
        )
    return batch // group

