"""LumiX latent nodes: empty maps latents (text -> maps) and photo latents (photo -> maps).

A LumiX LATENT is N scenes x M maps, consecutive per scene, plus the facts that travel with
it (``lumix_core.sampling.layout``): its map set, ``batch_index`` with one value per scene (so every
sampler's noise is shared by the maps of a scene) and, for photos, the pinned slot.
"""
from __future__ import annotations

import torch

from ..lumix_core.conventions import require_finite
from ..lumix_core.latents import SIZE_MULTIPLE
from ..lumix_core.maps import RELEASE, MapSet
from ..lumix_core.sampling.layout import (
    MAPS_KEY,
    PIN_KEY,
    PIN_SLOT,
    group_photo_latents,
    maps_latent_shape,
    photo_rgb,
    scene_batch_index,
    tag_maps,
)
from . import _host

CATEGORY = "LumiX/Latent"
MAX_RESOLUTION = 16384

_MAPS_TOOLTIP = ("Maps of each scene in the adapter's order, comma-separated, including 'color' "
                 "(the release: albedo,irradiance,color,depth,normal).")


def maps_latent(samples: torch.Tensor, maps: MapSet, num_scenes: int, pin_slot: "str | None" = None) -> dict:
    """The LATENT dict of a LumiX batch: samples (tagged with the map set) plus map set, noise indices, pin."""
    latent = {"samples": tag_maps(samples, maps), "batch_index": scene_batch_index(num_scenes, maps),
              MAPS_KEY: maps.to_string()}
    if pin_slot is not None:
        latent[PIN_KEY] = pin_slot
    return latent


class LumiXEmptyMapsLatent:
    DESCRIPTION = (
        "Empty latent for text -> maps: N scenes x M maps, the maps of a scene sharing one noise. "
        "Connect it to LumiX Sampler (or KSampler) and decode the result with LumiX Decode Maps."
    )
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("N x M empty FLUX latents with LumiX batch indices and map set.",)

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 512, "min": SIZE_MULTIPLE, "max": MAX_RESOLUTION, "step": SIZE_MULTIPLE}
        return {
            "required": {
                "width": ("INT", {**size, "tooltip": f"Image width in pixels, a multiple of {SIZE_MULTIPLE} "
                                                     "(the release was trained at 512)."}),
                "height": ("INT", {**size, "tooltip": f"Image height in pixels, a multiple of {SIZE_MULTIPLE} "
                                                      "(the release was trained at 512)."}),
                "scenes": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "Number of scenes N; the batch holds N x M maps."}),
                "maps": ("STRING", {"default": RELEASE.to_string(), "tooltip": _MAPS_TOOLTIP}),
            }
        }

    def make(self, width, height, scenes, maps=RELEASE.to_string()):
        ms = MapSet.parse(maps)
        shape = maps_latent_shape(int(width), int(height), int(scenes), ms)
        samples = torch.zeros(shape, device=_host.intermediate_device())
        return (maps_latent(samples, ms, int(scenes)),)


class LumiXPhotoToMapsLatent:
    DESCRIPTION = (
        "Latent for photo -> maps: VAE-encodes each photo into the color slot of its scene and pins it there, so "
        "sampling decomposes the photo into the other maps. Connect the photos and the FLUX VAE; sample with LumiX "
        "Sampler."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("N x M latents with each photo pinned in the color slot, for LumiX Sampler or LumiX Pin "
                       "Photo.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": f"N photos, one scene each (RGB, RGBA or grey), centre-cropped to "
                                               f"multiples of {SIZE_MULTIPLE} px; the release works at long side "
                                               "1536."}),
                "vae": ("VAE", {"tooltip": "The FLUX VAE (ae.safetensors)."}),
                "maps": ("STRING", {"default": RELEASE.to_string(), "tooltip": _MAPS_TOOLTIP}),
            }
        }

    def encode(self, image, vae, maps=RELEASE.to_string()):
        ms = MapSet.parse(maps)
        photo = vae.encode(photo_rgb(image))
        require_finite(photo, "the VAE's latent of the photo", "the VAE overflowed on finite pixels; run ComfyUI with "
                       "--fp32-vae or load the FLUX VAE (ae.safetensors) in bf16/fp32", lambda i: f"image {i}")
        samples = group_photo_latents(photo, ms, PIN_SLOT)
        return (maps_latent(samples, ms, int(photo.shape[0]), pin_slot=PIN_SLOT),)


NODE_CLASS_MAPPINGS = {
    "LumiXEmptyMapsLatent": LumiXEmptyMapsLatent,
    "LumiXPhotoToMapsLatent": LumiXPhotoToMapsLatent,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LumiXEmptyMapsLatent": "LumiX Empty Maps Latent",
    "LumiXPhotoToMapsLatent": "LumiX Photo To Maps Latent",
}
