"""Scene-group batches as hosts see them: latent layout, shared noise, pinned slots, schedules.

A LumiX batch is N scenes x M maps laid out consecutively: item ``g*M + i`` is map ``i`` of
scene ``g`` (map order from :mod:`lumix_core.maps`). A host (ComfyUI) moves such batches
around as plain tensors plus a few facts that must travel with them; this module is the one
place that knows those facts and checks them, so node code stays a thin translation:

* which maps a batch holds (``MAPS_KEY``, a ``MapSet`` string) and that its size is whole groups;
* which noise index every item gets (``scene_batch_index``: one index per scene, so a host
  that draws one noise per index gives every map of a scene the same noise);
* which slot is *pinned* to a clean latent (``PIN_KEY``; decomposition pins the photo in the
  colour slot) and how one model call's inputs are rewritten for it (:func:`pin_inputs`);
* the release schedule as host sigmas (:func:`release_sigmas`);
* one-step adapters (``lumix-train fit --objective one-step``): their host sigmas
  (:func:`one_step_sigmas`) and what to tell a user who samples an adapter unlike it was
  trained (:func:`objective_warnings`).

Nothing here imports a host. ComfyUI's sigma is LumiX's ``t`` (FLUX flow matching).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import torch
from einops import rearrange
from torch import Tensor

from ..conventions import FinishedMap, check_image, finish_map, require_finite, split_groups
from ..latents import LATENT_CHANNELS, SIZE_MULTIPLE, VAE_FACTOR, check_size
from ..maps import QUERY_SOURCE, RELEASE, MapSet, check_group_batch
from ..model.checkpoint import OBJECTIVE_ONE_STEP, OBJECTIVES
from .sampler import ONE_STEP_TIMESTEPS, ScheduleKind, schedule_for

#: Key of the map set (``"albedo,irradiance,color,depth,normal"``) in a host latent dict.
MAPS_KEY = "lumix_maps"
#: Key of the pinned slot's map name (``"color"``) in a host latent dict; the clean latent of
#: that slot is the slot itself in ``samples`` (one fact, one place).
PIN_KEY = "lumix_pin"
#: Map names a decomposition may pin (the query source is what the release pins).
PIN_SLOT = QUERY_SOURCE


# ----------------------------------------------------------------------------- map sets
def maps_of(latent: Mapping, default: MapSet = RELEASE) -> MapSet:
    """The map set a host latent dict declares (``MAPS_KEY``), or ``default`` when it has none."""
    value = latent.get(MAPS_KEY)
    if value is None:
        return default
    try:
        return MapSet.parse(value)
    except (ValueError, KeyError) as e:
        raise ValueError(f"latent field '{MAPS_KEY}'={value!r} is not a valid map set: {e}") from None


def check_same_maps(latent_maps: MapSet, adapter_maps: MapSet, adapter_name: str) -> None:
    """Refuse a latent whose maps are not the adapter's (order matters: G1 is indexed by it)."""
    if latent_maps.names != adapter_maps.names:
        raise ValueError(
            f"the latent holds maps {latent_maps.to_string()} (M={latent_maps.size}) but the adapter "
            f"{adapter_name} was trained for {adapter_maps.to_string()} (M={adapter_maps.size}); set the "
            f"latent node's 'maps' to '{adapter_maps.to_string()}'")


def tag_maps(samples: Tensor, maps: MapSet) -> Tensor:
    """Attach ``maps`` to the latent tensor itself (attribute ``MAPS_KEY``); returns ``samples``.

    Why on the tensor as well as in the LATENT dict: stock samplers (KSampler,
    SamplerCustomAdvanced) hand the model's wrappers only the samples tensor, so a check at
    sampling time can only see what travels with the tensor. Latents from other nodes carry
    no tag; for them only the batch size and the noise can be checked.
    """
    setattr(samples, MAPS_KEY, maps.to_string())
    return samples


def tagged_maps(samples: object) -> Optional[MapSet]:
    """The map set :func:`tag_maps` attached to a tensor, or None for an untagged one."""
    value = getattr(samples, MAPS_KEY, None)
    return None if value is None else MapSet.parse(value)


def describe_item(maps: MapSet, batch: int) -> Callable[[int], str]:
    """``item -> "map depth of scene 2"`` for a batch of whole groups (``"item i"`` otherwise)."""
    if batch % maps.size:
        return lambda i: f"item {i}"
    return lambda i: f"map {maps.names[i % maps.size]} of scene {i // maps.size}"


def require_finite_groups(x: Tensor, maps: MapSet, what: str, fix: str) -> Tensor:
    """:func:`~lumix_core.conventions.require_finite` naming the map and scene of the first bad value."""
    return require_finite(x, what, fix, describe_item(maps, x.shape[0]))


def scene_count(batch: int, maps: MapSet, what: str = "LATENT batch") -> int:
    """Number of scenes in a batch of whole groups, or a clear error."""
    return check_group_batch(batch, maps.size, what)


# ----------------------------------------------------------------------------- latents
def scene_batch_index(num_scenes: int, maps: MapSet) -> list[int]:
    """``[0]*M + [1]*M + ...``: a host that draws one noise per index shares it within a scene."""
    if num_scenes < 1:
        raise ValueError(f"number of scenes must be >= 1, got {num_scenes}")
    return [g for g in range(num_scenes) for _ in range(maps.size)]


def maps_latent_shape(width: int, height: int, num_scenes: int, maps: MapSet,
                      channels: int = LATENT_CHANNELS) -> tuple[int, int, int, int]:
    """``(N*M, C, H/8, W/8)`` for an empty maps latent; refuses sizes FLUX cannot patch."""
    check_size(width, height)
    scene_batch_index(num_scenes, maps)  # validates num_scenes
    return (num_scenes * maps.size, channels, height // VAE_FACTOR, width // VAE_FACTOR)


def group_photo_latents(photo: Tensor, maps: MapSet, slot: str = PIN_SLOT) -> Tensor:
    """``[N, C, h, w]`` photo latents -> ``[N*M, C, h, w]`` with each photo in ``slot``, zeros elsewhere."""
    if photo.dim() != 4:
        raise ValueError(f"photo latents must be [N, C, h, w], got shape {tuple(photo.shape)}")
    N, M = photo.shape[0], maps.size
    out = torch.zeros((N * M, *photo.shape[1:]), dtype=photo.dtype, device=photo.device)
    out[maps.index(slot)::M] = photo
    return out


def slot_latents(samples: Tensor, maps: MapSet, slot: str) -> Tensor:
    """``[N, ...]``: map ``slot`` of every scene of a ``[N*M, ...]`` batch."""
    scene_count(samples.shape[0], maps)
    return samples[maps.index(slot)::maps.size]


def noise_keys(noise: Tensor) -> list[int]:
    """One key per item of ``[B, ...]`` noise: equal to the previous item's key when the two are the same draw."""
    keys = [0]
    for i in range(1, noise.shape[0]):
        keys.append(keys[-1] if torch.equal(noise[i], noise[i - 1]) else keys[-1] + 1)
    return keys


def require_whole_scenes(keys: Sequence, maps: MapSet, what: str) -> None:
    """Refuse a batch whose scene groups were cut, judged by its per-item noise keys (``batch_index`` or
    :func:`noise_keys`).

    A LumiX latent gives the maps of a scene one key; a slice of it that does not start at a scene (Latent From
    Batch at item 3 of 5) puts two keys into one group of M. A batch where no neighbours share a key (a stock
    latent) passes: its noise is only warned about.
    """
    M, keys = maps.size, list(keys)
    same = [a == b for a, b in zip(keys, keys[1:])]
    if M <= 1 or len(keys) % M or not any(same):
        return
    if all(all(same[g * M:(g + 1) * M - 1]) for g in range(len(keys) // M)):
        return  # every group one key; scenes may share one (Latent Batch of two LumiX latents, fixed seeds)
    shown = keys if len(keys) <= 3 * M else keys[:3 * M] + ["..."]
    raise ValueError(
        f"{what} is not whole LumiX scenes: its noise indices {shown} put maps of different scenes into one group "
        f"of {M}, as when Latent From Batch takes a slice that does not start at a scene or is not whole scenes. "
        f"Slice by whole scenes: batch_index = k x {M} and length = n x {M} ({M} maps per scene: "
        f"{', '.join(maps.names)}).")


def check_scene_latent(latent: Mapping, maps: MapSet, what: str) -> int:
    """Scenes in a host latent dict: its samples are whole groups and its ``batch_index``, if any, is not cut."""
    count = scene_count(latent["samples"].shape[0], maps, what)
    if latent.get("batch_index") is not None:
        require_whole_scenes(latent["batch_index"], maps, what)
    return count


def require_flux_latent(samples: Tensor, what: str) -> None:
    """Refuse a latent that is not FLUX's ``[N, 16, H/8, W/8]``, naming what made it where the channels tell."""
    if samples.dim() == 4 and samples.shape[1] == LATENT_CHANNELS:
        return
    channels = samples.shape[1] if samples.dim() >= 2 else None
    maker = {4: "an SD 1.5 / SDXL latent, as Empty Latent Image or VAE Encode with an SD VAE make it"}.get(
        channels, "a latent of another model family")
    raise ValueError(
        f"{what} is not a FLUX latent: it has shape {tuple(samples.shape)}, {maker}; a FLUX latent has "
        f"{LATENT_CHANNELS} channels. Make it with LumiX Empty Maps Latent or LumiX Photo To Maps Latent (with the "
        "FLUX VAE) and sample it with the FLUX model from LumiX Load Adapter.")


def noise_is_shared(noise: Tensor, group: int) -> bool:
    """True when every map of every scene got the same noise as the scene's first map."""
    if group <= 1 or noise.shape[0] % group:
        return group <= 1
    g = rearrange(noise, "(g m) ... -> g m (...)", m=group)
    return bool((g == g[:, :1]).all())


def center_crop_box(width: int, height: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int, int, int]:
    """``(x0, y0, w, h)``: the largest centred crop whose sides are multiples of ``multiple``.

    Photos come in any size; FLUX needs multiples of 16 pixels. Cropping at most 15 pixels per
    side keeps the photo's scale (resizing would change what the maps are aligned with).
    """
    w, h = width - width % multiple, height - height % multiple
    if w <= 0 or h <= 0:
        raise ValueError(f"image of {width}x{height} pixels is smaller than {multiple}x{multiple}; "
                         f"LumiX needs at least {multiple} pixels per side")
    return ((width - w) // 2, (height - h) // 2, w, h)


def photo_rgb(image: Tensor) -> Tensor:
    """Photos ``[N, H, W, C]`` as the FLUX VAE takes them: RGB, centre-cropped to multiples of 16.

    Grey (1 channel) and grey + alpha (2) become RGB with three equal channels; an alpha
    channel is dropped. The VAE reads exactly three channels, and a grey photo is a colour
    photo whose channels agree. Non-finite pixels are refused (see ``require_finite``).
    """
    image = check_image(image, "photo", channels=(1, 2, 3, 4))
    require_finite(image, "the photo", "the node that made this IMAGE produced invalid pixels; fix or replace it "
                   "(e.g. load the photo again with Load Image). Nothing was encoded.", lambda i: f"image {i}")
    x0, y0, w, h = center_crop_box(int(image.shape[2]), int(image.shape[1]))
    pixels = image[:, y0:y0 + h, x0:x0 + w]
    return pixels[..., :1].repeat(1, 1, 1, 3) if pixels.shape[-1] <= 2 else pixels[..., :3]


# ----------------------------------------------------------------------------- pinning
def pin_inputs(x: Tensor, t: Tensor, clean: Tensor, maps: MapSet, slot: str = PIN_SLOT,
               chunks: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Rewrite one model call's inputs so map ``slot`` of every scene is clean at ``t = 0``.

    ``x`` is ``[K*B, ...]``: K copies (cond / uncond chunks) of the ``B = N*M`` latent batch, as
    hosts batch one model call; ``t`` is ``[K*B]``; ``clean`` is ``[N, ...]`` in model space
    (already scaled like ``x``). Returns new tensors (the caller's are not modified). With
    ``t = 0`` a flow-matching host's denoised output equals the input exactly, so the slot
    is never updated and comes back as ``clean``.
    """
    M = maps.size
    N = clean.shape[0]
    B = N * M
    if x.shape[1:] != clean.shape[1:]:
        raise ValueError(
            f"the pinned photo latent is {tuple(clean.shape[1:])} but the sampled latent is {tuple(x.shape[1:])}: "
            "the LATENT was resized or re-batched after LumiX Photo To Maps Latent; pin the latent you sample")
    if x.shape[0] % B:
        raise ValueError(
            f"model call with batch {x.shape[0]} does not hold whole copies of the {N}-scene x {M}-map batch "
            f"({B} items) the photo was pinned for; sample the same LATENT that LumiX Photo To Maps Latent made")
    K = x.shape[0] // B
    if chunks is not None and chunks != K:
        raise ValueError(f"model call holds {K} copies of the batch but the host reports {chunks} cond/uncond "
                         "chunks; a node that splits or reorders the batch cannot be combined with photo pinning")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"expected one timestep per batch item ({x.shape[0]}), got shape {tuple(t.shape)}")
    index = torch.arange(x.shape[0], device=x.device)
    mask = (index % M) == maps.index(slot)
    x = x.clone()
    t = t.clone()
    x[mask] = clean.to(device=x.device, dtype=x.dtype).repeat(K, *([1] * (clean.dim() - 1)))
    t[mask] = 0
    return x, t


def restore_slot(samples: Tensor, clean: Tensor, maps: MapSet, slot: str = PIN_SLOT) -> Tensor:
    """``samples [N*M, ...]`` with map ``slot`` of every scene set back to ``clean [N, ...]`` exactly.

    A pinned slot is never updated, but a host returns it through its own arithmetic (its
    sampler's last step, the latent scaling out of and back into model space), which can move
    it by a rounding error. Written back after sampling, the slot is bit-identical to the photo's
    latent, as :func:`~lumix_core.sampling.sampler.sample_euler` returns it. Returns a new tensor.
    """
    M = maps.size
    if samples.shape[0] != clean.shape[0] * M or samples.shape[1:] != clean.shape[1:]:
        raise ValueError(
            f"the sampled latent {tuple(samples.shape)} is not {clean.shape[0]} scene(s) of {M} maps of the pinned "
            f"photo latent {tuple(clean.shape[1:])}; sample the same LATENT that LumiX Photo To Maps Latent made")
    out = samples.clone()
    out[maps.index(slot)::M] = clean.to(device=out.device, dtype=out.dtype)
    return out


# ----------------------------------------------------------------------------- schedule
def release_sigmas(width: int, height: int, steps: int, denoise: float = 1.0,
                   kind: ScheduleKind = "release") -> Tensor:
    """Host sigmas (float32, ``steps + 1`` values ending in 0) for a LumiX schedule.

    ``denoise < 1`` keeps the last ``steps + 1`` values of the schedule for ``steps / denoise``
    steps, the way ComfyUI's KSampler shortens its own schedules; ``denoise <= 0`` gives none.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if denoise <= 0.0:
        return torch.zeros(0)
    total = steps if denoise >= 1.0 else int(steps / denoise)
    return schedule_for(width, height, total, kind)[-(steps + 1):].to(torch.float32)


def one_step_sigmas() -> Tensor:
    """Host sigmas of a one-step adapter (float32 ``[1, 0]``): the single Euler step from t = 1 to 0.

    Sampled with the noise disabled (a zero input, :data:`~lumix_core.sampling.sampler.ONE_STEP_TIMESTEPS`),
    a host's Euler step computes exactly what :func:`~lumix_core.sampling.sampler.decompose_one_step` does.
    """
    return torch.tensor(ONE_STEP_TIMESTEPS, dtype=torch.float32)


def objective_warnings(objective: str, sigmas: Sequence[float], *, pinned: bool, noise: bool,
                       adapter_name: str) -> list[str]:
    """What to tell a user who samples an adapter other than the way it was trained (empty: nothing).

    ``objective`` is the adapter's (``model.checkpoint.adapter_objective``), ``sigmas`` the schedule
    the host runs (``steps + 1`` values), ``pinned`` whether a photo is pinned in the colour slot and
    ``noise`` whether the sampler starts from random noise (False: the noise is disabled, a zero
    input). Sampling always goes ahead: these are warnings, the user may mean it.

    * one-step adapter: trained for one call, colour pinned, the other maps fed 0 at t = 1. Warned
      about: more than one step, a first step not from t = 1, no pinned photo, random noise.
    * flow-matching (multi-step) adapter: warned about the whole trajectory (from t = 1) in one step, where
      its maps are a blurred average; one step from t < 1 (the end of a split schedule, denoise < 1) is a
      refining pass and not warned about.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown adapter objective {objective!r}; expected one of {OBJECTIVES}")
    steps = len(sigmas) - 1
    if steps < 1:
        return []  # nothing is sampled
    one_step_fix = ("sample it in one step: LumiX Sampler with the 'lumix_one_step' scheduler, or "
                    "SamplerCustomAdvanced with DisableNoise and LumiX One-Step Schedule")
    starts_at_one = abs(float(sigmas[0]) - 1.0) <= 1e-6
    if objective != OBJECTIVE_ONE_STEP:
        if steps > 1 or not starts_at_one:  # one step from t < 1: a refining pass (a split schedule, denoise < 1)
            return []
        return [f"{adapter_name} is a multi-step (flow-matching) adapter, sampled here in 1 step: its maps come out as "
                "a blurred average (on the toy, one step is no better than a trivial guess). Use 24-50 steps, or a "
                "one-step adapter (lumix-train fit --objective one-step)"]
    name = (f"{adapter_name} is a one-step adapter (trained for one call: the photo pinned, the other maps fed 0 "
            "at t = 1)")
    out = []
    if steps > 1:
        out.append(f"{name}, but it is sampled with {steps} steps; the steps after the first feed it inputs it was "
                   f"never trained on, so expect worse maps, not better ones; {one_step_fix}")
    elif not starts_at_one:
        out.append(f"{name}, but its step starts at t = {float(sigmas[0]):.3g} instead of 1 (denoise < 1?); "
                   f"{one_step_fix} and denoise 1.0")
    if noise:
        out.append(f"{name}, but it is sampled from random noise instead of the zero input it was trained on; LumiX "
                   "Sampler disables the noise itself, with SamplerCustomAdvanced connect DisableNoise")
    if not pinned:
        out.append(f"{name}: it decomposes photos, but this latent has no pinned photo (text-to-maps), so every "
                   "map, the color included, is predicted with no photo to read. Make the latent with LumiX Photo To "
                   "Maps Latent (and pin it with LumiX Pin Photo for SamplerCustomAdvanced), or use a multi-step "
                   "adapter for text")
    return out


def pixel_size(latent_samples: Tensor) -> tuple[int, int]:
    """``(width, height)`` in pixels of a ``[B, C, h, w]`` latent."""
    return latent_samples.shape[-1] * VAE_FACTOR, latent_samples.shape[-2] * VAE_FACTOR


# ----------------------------------------------------------------------------- outputs
def finish_group_images(
    images01: Tensor,
    maps: "MapSet | str | Sequence[str] | None",
    outputs: Sequence[str],
    **options,
) -> dict[str, FinishedMap]:
    """Decoded ``[N*M, H, W, C]`` display images -> finished ``outputs`` maps of ``N`` scenes each.

    Maps of ``outputs`` that the map set does not hold come back black (with an all-zero mask
    for depth), so a fixed set of node outputs works with custom map sets; ``info`` says so.
    """
    ms = MapSet.parse(maps)
    images01 = check_image(images01, "decoded maps")
    require_finite_groups(images01, ms, "the decoded maps", "the VAE or the sampling produced invalid values; "
                          "check the adapter file, lower the strength or run the VAE in fp32 (--fp32-vae)")
    groups = split_groups(images01, ms)
    some = next(iter(groups.values()))
    out: dict[str, FinishedMap] = {}
    for name in outputs:
        if name in groups:
            out[name] = finish_map(name, groups[name], **options)
        else:
            black = torch.zeros((*some.shape[:3], 3), dtype=some.dtype, device=some.device)
            mask = torch.zeros(some.shape[:3], dtype=some.dtype, device=some.device)
            out[name] = FinishedMap(name, black, mask=mask if name == "depth" else None,
                                    info={"missing": 1.0})
    return out
