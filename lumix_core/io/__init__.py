"""Files: written atomically, safetensors read without pickles, PNG with text chunks, map export.

* :mod:`.files` -- the one atomic write every writer uses (temp file, then publish; nothing
  overwritten by surprise);
* :mod:`.safetensors_io` -- safetensors headers parsed by hand (pickles refused, truncation
  found) before any tensor is read; atomic save;
* :mod:`.png` -- a PNG encoder for 8/16-bit maps that always keeps its text chunks;
* :mod:`.export` -- what LumiX Save Maps writes: per-map PNGs and one multi-layer EXR per scene;
* :mod:`.sequence` -- a shot's maps as frame-numbered EXR / 16-bit PNG sequences, never overwritten.

File formats only, no model: the model's own weight files are read in :mod:`lumix_core.model`.

May import: lumix_core.maps, lumix_core.conventions.
"""
