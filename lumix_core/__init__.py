"""LumiX core: host-independent torch code (never imports ComfyUI)."""
from .maps import MapSet, RELEASE, RELEASE_MAPS, QUERY_SOURCE, canonical, check_group_batch

__all__ = ["MapSet", "RELEASE", "RELEASE_MAPS", "QUERY_SOURCE", "canonical", "check_group_batch"]
__version__ = "0.1.0"
