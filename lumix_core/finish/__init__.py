"""Finishing for compositing: what a pipeline does with a set of finished maps, no model needed.

* :mod:`.relight` -- albedo x Lambertian shading from the normal map (LumiX Relight);
* :mod:`.recompose` -- albedo x irradiance against color, in linear light (LumiX Recompose);
* :mod:`.consistency` -- do the maps of one scene agree? (LumiX Consistency Report);
* :mod:`.heatmap` -- the fixed colour ramp of every error heat-map.

The encodings the maps arrive in are those of :mod:`lumix_core.conventions`. Finishing never
imports the model, sampling, the world or training.

May import: lumix_core.maps, lumix_core.conventions.
"""
