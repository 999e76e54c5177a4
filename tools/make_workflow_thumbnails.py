"""Make workflows/<name>.jpg: a drawing of each shipped workflow's graph, from its JSON.

The Templates browser shows a workflow's .jpg beside it. Drawn from the file itself (node
boxes at their positions with their titles, sockets, widget values and links), so the
picture always matches the graph as shipped; no browser is needed:

    python tools/make_workflow_thumbnails.py [--width 1200] [names ...]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # workflow_tools (node_spec) and pack_import (our node classes)

from lumix_core.io.files import write_bytes_atomically  # noqa: E402

TITLE_H, SLOT_H, PAD = 30, 20, 10
#: Link and socket colours of ComfyUI's default palette.
TYPE_COLORS = {"MODEL": "#B39DDB", "CLIP": "#FFD500", "VAE": "#FF6E6E", "CONDITIONING": "#FFA931",
               "LATENT": "#FF9CF9", "IMAGE": "#64B5F6", "MASK": "#81C784", "STRING": "#7CCF7C", "INT": "#7CCF7C",
               "NOISE": "#B0B0B0", "GUIDER": "#66FFFF", "SAMPLER": "#ECB4B4", "SIGMAS": "#CDFFCD"}
#: Display names of the ComfyUI nodes the workflows use (ours come from the pack's mappings).
CORE_TITLES = {"UNETLoader": "Load Diffusion Model", "DualCLIPLoader": "DualCLIPLoader", "VAELoader": "Load VAE",
               "CLIPTextEncode": "CLIP Text Encode", "FluxGuidance": "FluxGuidance", "SaveImage": "Save Image",
               "PreviewImage": "Preview Image", "LoadImage": "Load Image", "ImageScale": "Upscale Image",
               "PreviewAny": "Preview Any", "PrimitiveNode": "Primitive", "MarkdownNote": "Note",
               "DisableNoise": "DisableNoise", "BasicGuider": "BasicGuider", "KSamplerSelect": "KSamplerSelect",
               "SamplerCustomAdvanced": "SamplerCustomAdvanced", "LoadVideo": "Load Video",
               "GetVideoComponents": "Get Video Components"}


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _pack_nodes() -> tuple[dict, dict]:
    from pack_import import pack_module

    classes, names = {}, {}
    for module in ("compositing", "lumix_model", "lumix_latents", "lumix_sampler", "lumix_maps", "lumix_shot"):
        nodes = pack_module(f"nodes.{module}")
        classes.update(nodes.NODE_CLASS_MAPPINGS)
        names.update(nodes.NODE_DISPLAY_NAME_MAPPINGS)
    return classes, names


def _widget_lines(node: dict, classes: dict) -> list[str]:
    import workflow_tools as wt

    values = node.get("widgets_values") or []
    if node["type"] in classes:
        named = wt.split_widget_values(wt.node_spec(classes[node["type"]]), values)
        return [f"{k}: {v}" for k, v in named.items()]
    return [str(v) for v in values if not isinstance(v, str) or v not in wt.CONTROL_VALUES]


def draw(workflow: dict, width: int) -> Image.Image:
    """The graph as ComfyUI lays it out (canvas coordinates), scaled to ``width`` pixels."""
    classes, names = _pack_nodes()
    nodes = {n["id"]: n for n in workflow["nodes"]}
    x0 = min(n["pos"][0] for n in nodes.values()) - 40
    y0 = min(n["pos"][1] for n in nodes.values()) - TITLE_H - 40
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values()) + 40
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values()) + 40
    image = Image.new("RGB", (int(x1 - x0), int(y1 - y0)), "#1E1E1E")
    pen = ImageDraw.Draw(image)
    small, title_font = _font(13), _font(15)

    def at(x: float, y: float) -> tuple[float, float]:
        return x - x0, y - y0

    def slot(node: dict, index: int, output: bool) -> tuple[float, float]:
        x, y = node["pos"]
        return at(x + node["size"][0] if output else x, y + PAD + index * SLOT_H)

    for lid, src, s_slot, dst, d_slot, kind in workflow["links"]:
        (ax, ay), (bx, by) = slot(nodes[src], s_slot, True), slot(nodes[dst], d_slot, False)
        bend = max(40.0, abs(bx - ax) / 2)
        points = []
        for i in range(33):  # cubic Bezier, like LiteGraph's spline links
            t = i / 32
            u = 1 - t
            points.append((u ** 3 * ax + 3 * u * u * t * (ax + bend) + 3 * u * t * t * (bx - bend) + t ** 3 * bx,
                           u ** 3 * ay + 3 * u * u * t * ay + 3 * u * t * t * by + t ** 3 * by))
        pen.line(points, fill=TYPE_COLORS.get(kind, "#AAAAAA"), width=3)

    for node in nodes.values():
        x, y = at(*node["pos"])
        w, h = node["size"]
        note = node["type"] == "MarkdownNote"
        pen.rounded_rectangle((x, y - TITLE_H, x + w, y + h), 8, fill="#4A3F24" if note else "#353535",
                              outline="#151515", width=2)
        pen.rounded_rectangle((x, y - TITLE_H, x + w, y), 8, fill="#5C4E2A" if note else "#262626")
        title = node.get("title") or names.get(node["type"]) or CORE_TITLES.get(node["type"], node["type"])
        pen.text((x + 12, y - TITLE_H + 7), title[: int(w / 8)], fill="#E0E0E0", font=title_font)
        if note:
            text = "\n".join(textwrap.fill(line, int(w / 7)) for line in node["widgets_values"][0].splitlines())
            pen.multiline_text((x + 12, y + 10), text, fill="#D8D0B8", font=small, spacing=4)
            continue
        for i, inp in enumerate(node.get("inputs", [])):
            sx, sy = slot(node, i, False)
            pen.ellipse((sx - 5, sy - 5, sx + 5, sy + 5), fill=TYPE_COLORS.get(inp["type"], "#AAAAAA"))
            pen.text((sx + 10, sy - 8), inp["name"], fill="#B0B0B0", font=small)
        for i, out in enumerate(node.get("outputs", [])):
            sx, sy = slot(node, i, True)
            pen.ellipse((sx - 5, sy - 5, sx + 5, sy + 5), fill=TYPE_COLORS.get(out["type"], "#AAAAAA"))
            label = out["name"]
            pen.text((sx - 10 - pen.textlength(label, font=small), sy - 8), label, fill="#B0B0B0", font=small)
        rows = max(len(node.get("inputs", [])), len(node.get("outputs", [])))
        wy = y + PAD + rows * SLOT_H
        for line in _widget_lines(node, classes):
            if wy + SLOT_H > y + h:
                break
            pen.rounded_rectangle((x + 10, wy - 2, x + w - 10, wy + SLOT_H - 4), 6, fill="#222222")
            pen.text((x + 18, wy), line.replace("\n", " ")[: int((w - 30) / 7)], fill="#C8C8C8", font=small)
            wy += SLOT_H + 2
    height = round(image.height * width / image.width)
    return image.resize((width, height), Image.LANCZOS)


def main(argv: "list[str] | None" = None) -> None:
    parser = argparse.ArgumentParser(prog="python tools/make_workflow_thumbnails.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(p.stem for p in (ROOT / "workflows").glob("*.json")))
    parser.add_argument("--width", type=int, default=1200)
    args = parser.parse_args(argv)
    for name in args.names:
        workflow = json.loads((ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
        buffer = io.BytesIO()
        draw(workflow, args.width).save(buffer, "JPEG", quality=88)
        path = write_bytes_atomically(ROOT / "workflows" / f"{name}.jpg", buffer.getvalue())
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
