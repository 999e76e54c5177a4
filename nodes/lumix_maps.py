"""LumiX map outputs: decode a maps latent (or split a decoded batch) into five map images.

The conventions (unit normals, depth near = bright, one channel, min-max) are applied by
``lumix_core.conventions`` through ``lumix_core.sampling.layout.finish_group_images``.
"""
from __future__ import annotations

from ..lumix_core.conventions import DEFAULT_NORMAL_CONVENTION, NORMAL_CONVENTIONS
from ..lumix_core.latents import LATENT_CHANNELS
from ..lumix_core.maps import RELEASE, RELEASE_MAPS, MapSet
from ..lumix_core.sampling.layout import (
    check_scene_latent,
    finish_group_images,
    maps_of,
    require_finite_groups,
    require_flux_latent,
)
from . import _host

CATEGORY = "LumiX/Maps"

#: The fixed outputs of the map nodes (the released maps, in release order) plus the depth MASK.
OUTPUTS = RELEASE_MAPS
RETURN_TYPES = ("IMAGE",) * len(OUTPUTS) + ("MASK",)
RETURN_NAMES = OUTPUTS + ("depth_mask",)
OUTPUT_TOOLTIPS = (
    "Albedo: sRGB diffuse reflectance in [0,1].",
    "Irradiance: diffuse shading, sRGB-encoded, in [0,1].",
    "Color: the sRGB image.",
    "Depth: relative, near = bright (far = bright if inverted), min-max normalised per image, grey.",
    "Normal: camera-space unit vectors encoded (n+1)/2, OpenGL (Y up) unless directx is chosen.",
    "Depth as a single-channel MASK with the same values as the depth image.",
)


def _options_inputs() -> dict:
    return {
        "normal_convention": (list(NORMAL_CONVENTIONS), {
            "default": DEFAULT_NORMAL_CONVENTION,
            "tooltip": "Normal map convention: opengl (Y up, Blender) or directx (Y down, Unreal, 3ds Max)."}),
        "depth_far_bright": ("BOOLEAN", {
            "default": False,
            "tooltip": "Invert depth to far = bright (a Z-like pass); it stays relative, never metric."}),
    }


def _outputs(images01, maps, normal_convention: str, depth_far_bright: bool) -> tuple:
    finished = finish_group_images(images01, maps, OUTPUTS, normal_convention=normal_convention,
                                   depth_invert=bool(depth_far_bright))
    return tuple(finished[name].image for name in OUTPUTS) + (finished["depth"].mask,)


class LumiXDecodeMaps:
    DESCRIPTION = (
        "Decodes a sampled LumiX latent with the FLUX VAE into albedo, irradiance, color, depth and normal images "
        "(N each) in the LumiX conventions, plus depth as a MASK. Connect LumiX Sampler and the FLUX VAE."
    )
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = RETURN_TYPES
    RETURN_NAMES = RETURN_NAMES
    OUTPUT_TOOLTIPS = OUTPUT_TOOLTIPS

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "The sampled LumiX latent; its map set travels with it."}),
                "vae": ("VAE", {"tooltip": "The FLUX VAE (ae.safetensors)."}),
                **_options_inputs(),
            }
        }

    def decode(self, samples, vae, normal_convention=DEFAULT_NORMAL_CONVENTION, depth_far_bright=False):
        maps = maps_of(samples)
        require_flux_latent(samples["samples"], "LumiX Decode Maps: the LATENT")
        vae_channels = getattr(vae, "latent_channels", None)
        if isinstance(vae_channels, int) and vae_channels != LATENT_CHANNELS:
            raise ValueError(f"LumiX Decode Maps: the VAE decodes {vae_channels}-channel latents, so it is not the "
                             "FLUX VAE; load ae.safetensors with Load VAE and connect it")
        check_scene_latent(samples, maps, "LumiX Decode Maps: the LATENT batch")
        require_finite_groups(samples["samples"], maps, "the LATENT to decode",
                              "sampling diverged; check the adapter file of LumiX Load Adapter, lower its strength "
                              "or the cfg, and sample again. Nothing was decoded.")
        _host.interrupted_check()
        images = vae.decode(samples["samples"])
        if images.dim() == 5:  # video VAEs return [B, T, H, W, C]
            images = images.reshape(-1, *images.shape[-3:])
        return _outputs(images, maps, normal_convention, depth_far_bright)


class LumiXSplitMaps:
    DESCRIPTION = (
        "Splits an already decoded IMAGE batch of N scenes x M maps (e.g. from VAE Decode) into the five map "
        "outputs, with the same conventions as LumiX Decode Maps."
    )
    CATEGORY = CATEGORY
    FUNCTION = "split"
    RETURN_TYPES = RETURN_TYPES
    RETURN_NAMES = RETURN_NAMES
    OUTPUT_TOOLTIPS = OUTPUT_TOOLTIPS

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "N x M decoded maps, the M maps of each scene consecutive, in "
                                                "map-set order."}),
                "maps": ("STRING", {"default": RELEASE.to_string(),
                                    "tooltip": "Maps of each scene in batch order, comma-separated, including "
                                               "'color'."}),
                **_options_inputs(),
            }
        }

    def split(self, images, maps=RELEASE.to_string(), normal_convention=DEFAULT_NORMAL_CONVENTION,
              depth_far_bright=False):
        return _outputs(images, MapSet.parse(maps), normal_convention, depth_far_bright)


NODE_CLASS_MAPPINGS = {
    "LumiXDecodeMaps": LumiXDecodeMaps,
    "LumiXSplitMaps": LumiXSplitMaps,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LumiXDecodeMaps": "LumiX Decode Maps",
    "LumiXSplitMaps": "LumiX Split Maps",
}
