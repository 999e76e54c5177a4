"""The LumiX model: Tensor LoRA, Query-Broadcast Attention, the adapter and its files, a FLUX.1.

* :mod:`.tensor_lora` -- one low-rank adapter whose output for map i reads every map's input;
* :mod:`.qba` -- the double- and single-block forward with the color map's query: the one
  implementation, run on any block with FLUX's attribute names (ours, BFL's, ComfyUI's);
* :mod:`.adapter` -- two Tensor LoRAs per block, under the release's parameter names;
* :mod:`.checkpoint` -- adapter files: the release's layout, our metadata, strict checks;
* :mod:`.adapter_cache` -- each adapter file read once and checked against every model;
* :mod:`.flux_check` -- is a host's model a FLUX.1 LumiX can patch, and of which shape?
* :mod:`.flux`, :mod:`.flux_math`, :mod:`.flux_io` -- a compact FLUX.1 with the BFL names,
  its attention maths, its weight files;
* :mod:`.fp8`, :mod:`.fp8_files` -- frozen linears stored as float8 with a per-tensor scale,
  and the fp8 FLUX files ComfyUI users have.

The model knows nothing of sampling, the world, training or the toy, and never imports ComfyUI.

May import: lumix_core.maps, lumix_core.io.
"""
