"""comfyui-lumix: ComfyUI entry point. Imports only the thin node adapters.

``WEB_DIRECTORY`` is served by ComfyUI under ``/extensions/<pack folder>/``; the frontend's node help
panel reads ``docs/<NodeName>.md`` from it (one markdown page per node, the longer help).
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
