"""LumiX compositing nodes: save maps (PNG 8/16-bit, EXR), relight, recompose, consistency report.

Thin adapters: ComfyUI types in, one ``lumix_core`` call, ComfyUI types out. ``folder_paths``
(ComfyUI) is imported inside the save function only, so this module imports without ComfyUI.
"""
from __future__ import annotations

import json

from ..lumix_core.conventions import DEFAULT_NORMAL_CONVENTION, NORMAL_CONVENTIONS, conventions_metadata
from ..lumix_core.finish.consistency import DEPTH_MODELS, HEATMAP_NAMES, consistency_report
from ..lumix_core.finish.recompose import RECOMPOSE_ERROR_VMAX, recompose
from ..lumix_core.finish.relight import Light, parse_color, relight
from ..lumix_core.io.export import save_maps
from ..lumix_core.maps import RELEASE_MAPS

CATEGORY = "LumiX/Compositing"

#: What each connected map is, as the start of a one-sentence tooltip (see :func:`_map_tooltip`).
_MAP_TOOLTIPS = {
    "albedo": "Albedo map (sRGB, [0,1])",
    "irradiance": "Irradiance (shading) map from LumiX (sRGB-encoded, [0,1])",
    "color": "Color map (sRGB, [0,1])",
    "depth": "Depth map: relative, near = bright, min-max normalised (grey IMAGE)",
    "normal": "Normal map: camera-space unit vectors encoded (n+1)/2, OpenGL (Y up) unless set otherwise",
}


def _map_tooltip(name: str, note: str = "") -> str:
    """One sentence: what the map is, then ``note`` (what this node does with it) after a semicolon."""
    text = _MAP_TOOLTIPS.get(name, f"{name} map")
    return f"{text}; {note}." if note else f"{text}."


def _normal_convention_input(tooltip: str) -> tuple:
    return (list(NORMAL_CONVENTIONS), {"default": DEFAULT_NORMAL_CONVENTION, "tooltip": tooltip})


class LumiXSaveMaps:
    DESCRIPTION = (
        "Saves LumiX maps into the output folder: 8-bit PNG, 16-bit PNG (depth, normal) and one multi-layer float EXR "
        "per scene, with prompt, seed and map conventions embedded; never overwrites. Connect the map outputs of "
        "LumiX Decode Maps."
    )
    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        optional = {name: ("IMAGE", {"tooltip": _map_tooltip(name, "optional, not saved when unconnected")})
                    for name in RELEASE_MAPS}
        optional["prompt_text"] = ("STRING", {"default": "", "multiline": True,
                                              "tooltip": "Prompt to record in the files' metadata."})
        optional["report_json"] = ("STRING", {
            "forceInput": True,
            "tooltip": "Optional report_json of LumiX Consistency Report, saved beside the maps as "
                       "<prefix>_<counter>_report.json."})
        optional["seed"] = ("INT", {"default": -1, "min": -1, "max": 0xFFFFFFFFFFFFFFFF,
                                    "tooltip": "Seed to record in the metadata; -1 records none."})
        return {
            "required": {
                "filename_prefix": ("STRING", {
                    "default": "LumiX/maps",
                    "tooltip": "File name prefix relative to the output folder; sub-folders are allowed, '..' and "
                               "absolute paths are not."}),
                "save_png8": ("BOOLEAN", {"default": True, "tooltip": "8-bit PNG for every map (depth as grey)."}),
                "save_png16": ("BOOLEAN", {"default": True,
                                           "tooltip": "16-bit PNG for depth (grey) and normal (RGB)."}),
                "save_exr": ("BOOLEAN", {"default": True,
                                         "tooltip": "One multi-layer float32 EXR per scene (needs the 'openexr' "
                                                    "Python package)."}),
                "normal_convention": _normal_convention_input(
                    "Convention of the connected normal map, recorded in the metadata (the pixels are saved as they "
                    "are)."),
                "depth_far_bright": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Set if the connected depth map is inverted (far = bright); recorded in the "
                               "metadata."}),
            },
            "optional": optional,
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, filename_prefix, save_png8, save_png16, save_exr, normal_convention, depth_far_bright,
             prompt_text="", seed=-1, report_json=None, prompt=None, extra_pnginfo=None, **maps):
        import folder_paths  # ComfyUI; imported here so the module loads without it

        images = {name: maps[name] for name in RELEASE_MAPS if maps.get(name) is not None}
        formats = [f for f, on in (("png8", save_png8), ("png16", save_png16), ("exr", save_exr)) if on]
        saved = save_maps(
            images,
            folder_paths.get_output_directory(),
            filename_prefix,
            prompt=prompt_text,
            seed=None if seed is None or seed < 0 else int(seed),
            formats=formats,
            conventions=conventions_metadata(normal_convention, depth_invert=bool(depth_far_bright)),
            extra_text=_workflow_text(prompt, extra_pnginfo),
            report=report_json,
        )
        shown = [f for f in saved if f.format == "png8"] or [f for f in saved if f.format == "png16"]
        return {"ui": {"images": [{"filename": f.filename, "subfolder": f.subfolder, "type": "output"}
                                  for f in shown]}}


def _workflow_text(prompt, extra_pnginfo) -> dict:
    """ComfyUI's own PNG metadata (graph and workflow), as SaveImage writes it, unless disabled."""
    try:
        from comfy.cli_args import args  # ComfyUI

        if getattr(args, "disable_metadata", False):
            return {}
    except ImportError:
        pass
    text = {}
    if prompt is not None:
        text["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        text[str(key)] = json.dumps(value)
    return text


class LumiXRelight:
    DESCRIPTION = (
        "Relights a scene from its albedo and normal maps with one directional light (Lambertian, linear light); "
        "optional depth adds falloff, optional irradiance keeps the original shadows. Connect the maps of LumiX "
        "Decode Maps."
    )
    CATEGORY = CATEGORY
    FUNCTION = "relight"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("relit",)
    OUTPUT_TOOLTIPS = ("The relit image (sRGB, [0,1]).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "albedo": ("IMAGE", {"tooltip": _map_tooltip("albedo")}),
                "normal": ("IMAGE", {"tooltip": _map_tooltip("normal")}),
                "azimuth": ("FLOAT", {
                    "default": 45.0, "min": -360.0, "max": 360.0, "step": 1.0,
                    "tooltip": "Light direction in the image plane, degrees: 0 = from the right, 90 = from the top, "
                               "180 = from the left."}),
                "elevation": ("FLOAT", {
                    "default": 45.0, "min": -90.0, "max": 90.0, "step": 1.0,
                    "tooltip": "Light height, degrees: 0 = grazing, 90 = from the camera, negative = from behind."}),
                "light_color": ("STRING", {"default": "#FFFFFF",
                                           "tooltip": "Light colour: '#RRGGBB' (sRGB) or 'r,g,b' linear "
                                                      "multipliers."}),
                "intensity": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.05,
                                        "tooltip": "Light intensity (linear)."}),
                "ambient": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 5.0, "step": 0.01,
                                      "tooltip": "White ambient light reaching every pixel (linear)."}),
                "normal_convention": _normal_convention_input("Convention of the connected normal map."),
            },
            "optional": {
                "depth": ("IMAGE", {"tooltip": _map_tooltip("depth", "optional, enables the light falloff")}),
                "irradiance": ("IMAGE", {"tooltip": _map_tooltip("irradiance", "optional, enables keep_shading")}),
                "falloff": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.05,
                                      "tooltip": "Distance falloff strength (needs depth); 0 = none."}),
                "keep_shading": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "How much of the original shading pattern (from irradiance) to keep; 0 = none."}),
            },
        }

    def relight(self, albedo, normal, azimuth, elevation, light_color, intensity, ambient, normal_convention,
                depth=None, irradiance=None, falloff=1.0, keep_shading=0.0):
        light = Light(float(azimuth), float(elevation), parse_color(light_color), float(intensity), float(ambient))
        out = relight(albedo, normal, light, depth=depth, irradiance=irradiance, normal_convention=normal_convention,
                      falloff=float(falloff), keep_shading=float(keep_shading))
        return (out,)


class LumiXRecompose:
    DESCRIPTION = (
        "Multiplies albedo and irradiance in linear light into a colour estimate and shows where it differs from the "
        f"color map (heat-map; brightest = {RECOMPOSE_ERROR_VMAX} linear error). Connect the maps of LumiX Decode Maps."
    )
    CATEGORY = CATEGORY
    FUNCTION = "recompose"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("color_estimate", "error_heatmap")
    OUTPUT_TOOLTIPS = (
        "Albedo x irradiance as an sRGB image, scaled to the color map when fit_exposure is on.",
        f"Heat-map of the estimate's linear error against the color map; brightest = {RECOMPOSE_ERROR_VMAX}.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "albedo": ("IMAGE", {"tooltip": _map_tooltip("albedo")}),
                "irradiance": ("IMAGE", {"tooltip": _map_tooltip("irradiance")}),
                "color": ("IMAGE", {"tooltip": _map_tooltip("color", "the reference for the error")}),
                "fit_exposure": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Scale the estimate by the one factor per image that best matches the colour (the "
                               "maps' exposure is arbitrary)."}),
            }
        }

    def recompose(self, albedo, irradiance, color, fit_exposure):
        result = recompose(albedo, irradiance, color, fit_scale=bool(fit_exposure))
        return (result.estimate, result.error_heatmap())


#: Output tooltips of LumiX Consistency Report's heat-maps (black where a check was skipped).
_HEATMAP_TOOLTIPS = {
    "normal_deviation": "Heat-map of how far the decoded normals are from unit length (black = unit).",
    "recompose_error": "Heat-map of the error of albedo x irradiance against the color map.",
    "depth_normal_error": "Heat-map of the angle between normals derived from depth and the predicted normals.",
}


class LumiXConsistencyReport:
    DESCRIPTION = (
        "Checks without ground truth that the maps of each scene agree (unit normals, albedo x irradiance vs colour, "
        "depth vs normals, edges) and outputs a JSON report and heat-maps. Connect the maps of LumiX Decode Maps."
    )
    CATEGORY = CATEGORY
    FUNCTION = "report"
    RETURN_TYPES = ("STRING",) + ("IMAGE",) * len(HEATMAP_NAMES)
    RETURN_NAMES = ("report_json",) + HEATMAP_NAMES
    OUTPUT_TOOLTIPS = (
        ("The report as JSON, with how to read each number; connect it to LumiX Save Maps to save it.",)
        + tuple(_HEATMAP_TOOLTIPS.get(name, f"Heat-map of the {name} check.") for name in HEATMAP_NAMES))

    @classmethod
    def INPUT_TYPES(cls):
        optional = {name: ("IMAGE", {"tooltip": _map_tooltip(name, "optional, checks that need it are skipped "
                                                                   "without it")})
                    for name in RELEASE_MAPS}
        return {
            "required": {
                "fov_deg": ("FLOAT", {
                    "default": 60.0, "min": 1.0, "max": 179.0, "step": 1.0,
                    "tooltip": "Assumed horizontal field of view of the camera in degrees, for normals from "
                               "depth."}),
                "normal_convention": _normal_convention_input("Convention of the connected normal map."),
                "near_far_ratio": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 0.99, "step": 0.01,
                    "tooltip": "Nearest/farthest distance of the scene, to turn relative depth into distances; "
                               "0 = fit it to the normals."}),
                "depth_model": (["fit"] + list(DEPTH_MODELS), {
                    "default": "fit",
                    "tooltip": "How relative depth maps to distance: linear in depth, linear in disparity "
                               "(1/depth), or 'fit' to pick the better one."}),
                "analysis_size": ("INT", {
                    "default": 512, "min": 64, "max": 4096, "step": 64,
                    "tooltip": "Longer image side the checks run at (smaller = faster); the heat-maps have this "
                               "size."}),
            },
            "optional": optional,
        }

    def report(self, fov_deg, normal_convention, near_far_ratio, depth_model, analysis_size, **maps):
        images = {name: maps[name] for name in RELEASE_MAPS if maps.get(name) is not None}
        report, heat = consistency_report(
            images,
            fov_deg=float(fov_deg),
            normal_convention=normal_convention,
            near_far_ratio=float(near_far_ratio) if near_far_ratio > 0 else None,
            depth_model=None if depth_model == "fit" else depth_model,
            analysis_size=int(analysis_size),
        )
        return (json.dumps(report, indent=2),) + tuple(heat[name] for name in HEATMAP_NAMES)


NODE_CLASS_MAPPINGS = {
    "LumiXSaveMaps": LumiXSaveMaps,
    "LumiXRelight": LumiXRelight,
    "LumiXRecompose": LumiXRecompose,
    "LumiXConsistencyReport": LumiXConsistencyReport,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LumiXSaveMaps": "LumiX Save Maps",
    "LumiXRelight": "LumiX Relight",
    "LumiXRecompose": "LumiX Recompose",
    "LumiXConsistencyReport": "LumiX Consistency Report",
}
