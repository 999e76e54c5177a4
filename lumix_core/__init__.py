"""LumiX core: host-independent torch code (never imports ComfyUI).

Grouped by concern, lowest layer first. Every sub-package's ``__init__`` (and every module
directly in ``lumix_core/``) says what lives there and, in a ``May import:`` line, which parts
of ``lumix_core`` it may import; ``tests/test_import_layers.py`` reads the import statements
and holds every module to that line, so imports point one way and never form a cycle.

* :mod:`.maps` -- which maps exist, their order in a scene group, the query source;
* :mod:`.conventions` -- how every map is encoded for display, compositing and export;
* :mod:`.latents` -- FLUX latents: VAE scaling, 2 x 2 patch packing, position ids, sizes;
* :mod:`.cli_args` -- checks of command-line values shared by the commands;
* :mod:`.io` -- files written atomically, safetensors read safely, PNG, the map export;
* :mod:`.finish` -- what compositing does with finished maps: relight, recompose, consistency;
* :mod:`.model` -- the LumiX model: Tensor LoRA, QBA, the adapter and its files, a FLUX.1;
* :mod:`.sampling` -- schedules, shared noise, the Euler sampler, scene batches for hosts;
* :mod:`.world` -- the synthetic world with exact ground truth, its dataset, the metrics;
* :mod:`.train` -- the headless trainer (``lumix-train``);
* :mod:`.toy` -- the toy LumiX that ``lumix demo`` runs;
* :mod:`.cli` -- the ``lumix`` command (``python -m lumix_core``).

This file only re-exports the map set.

May import: lumix_core.maps.
"""
from .maps import QUERY_SOURCE, RELEASE, RELEASE_MAPS, MapSet, canonical, check_group_batch

__all__ = ["MapSet", "RELEASE", "RELEASE_MAPS", "QUERY_SOURCE", "canonical", "check_group_batch"]
__version__ = "0.1.0"
