"""Shots, not stills: a frame sequence decomposed as one shot, its maps stable from frame to frame.

* :mod:`.chunks` -- the chunked driver: any per-chunk decomposition over a shot, the model
  never seeing more than one chunk of frames at once;
* :mod:`.flow` -- dense optical flow between frames (opencv) and warping by it;
* :mod:`.stabilize` -- temporal stabilisation of the finished maps: shot-level fusion for a
  locked-off camera, flow-guided blending of neighbouring frames for a moving one.

Host-independent: the toy (``lumix decompose --sequence``) and the ComfyUI nodes call the same
functions. Maps are display maps ``{name: [T, H, W, C]}`` in [0, 1] as
:mod:`lumix_core.conventions` encodes them.

May import: lumix_core.maps, lumix_core.conventions.
"""
