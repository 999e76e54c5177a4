"""Adapter files: the release layout is read, every malformed file gets a specific message."""
import json
import pickle
import struct

import pytest
import torch
from helpers import randomize_
from safetensors.torch import save_file

from lumix_core.io.safetensors_io import CheckpointError
from lumix_core.maps import MapSet
from lumix_core.model.adapter import LumiXAdapter, default_spec
from lumix_core.model.checkpoint import ModelShape, check_fits, inspect_adapter, load_adapter, save_adapter

D, R, ND, NS = 32, 4, 2, 3
MODEL = ModelShape(hidden=D, double_blocks=ND, single_blocks=NS)


def release_like(tmp_path, name="lumix.safetensors", **spec_kw):
    """A synthetic file in the released layout: release keys, no metadata."""
    kw = dict(rank=R, hidden=D, double_blocks=ND, single_blocks=NS)
    kw.update(spec_kw)
    adapter = randomize_(LumiXAdapter(default_spec(**kw)))
    state = adapter.state_dict()
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


def test_release_layout_is_read_as_release(tmp_path):
    path, state = release_like(tmp_path)
    info = inspect_adapter(path)
    assert info.is_release_layout and info.spec.maps.names == ("albedo", "irradiance", "color", "depth", "normal")
    assert info.spec.alpha is None and info.spec.rank == R and info.num_tensors == (ND + NS) * 6
    adapter = load_adapter(path, MODEL)
    for k, v in adapter.state_dict().items():
        assert torch.equal(v, state[k])


def test_our_files_round_trip_with_metadata(tmp_path):
    maps = MapSet.parse("albedo,color,depth,roughness")
    adapter = randomize_(LumiXAdapter(default_spec(maps=maps, rank=R, hidden=D, double_blocks=ND,
                                                   single_blocks=NS, alpha=4.0)))
    path = save_adapter(adapter, tmp_path / "mine.safetensors")
    with pytest.raises(FileExistsError):
        save_adapter(adapter, path)
    info = inspect_adapter(path)
    assert not info.is_release_layout
    assert info.spec.maps == maps and info.spec.alpha == 4.0 and info.metadata["lumix.rank"] == str(R)
    loaded = load_adapter(path, MODEL, maps=maps)
    assert all(torch.equal(a, b) for a, b in zip(adapter.state_dict().values(), loaded.state_dict().values()))


def test_release_sized_header_parse_without_building_the_model(tmp_path):
    """57 blocks, d=3072, R=8, M=5: 342 tensors, 133.1 M params, parsed from the header alone
    (the file's data region is sparse: nothing is allocated)."""
    spec = default_spec()
    header, offset = {}, 0
    for key, shape in spec.expected_shapes().items():
        n = 4
        for s in shape:
            n *= s
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path = tmp_path / "release.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.seek(8 + len(raw) + offset - 1)
        f.write(b"\0")
    info = inspect_adapter(path)
    assert info.num_tensors == 342
    assert info.num_params == 133_101_840 and round(info.num_params / 1e6, 1) == 133.1
    check_fits(info, ModelShape(3072, 19, 38))
    with pytest.raises(CheckpointError, match="hidden size is 3072 but the model's is 64"):
        check_fits(info, ModelShape(64, 19, 38))


def test_wrong_rank(tmp_path):
    path, _ = release_like(tmp_path)
    with pytest.raises(CheckpointError, match=f"adapter rank is {R}, expected 8"):
        load_adapter(path, MODEL, rank=8)
    # one tensor with another rank inside the file
    path2, state = release_like(tmp_path, "bad_rank.safetensors")
    state["single_blocks.1.processor.proj_tt_lora.G3"] = torch.zeros(5, D, R + 1)
    save_file(state, str(path2))
    with pytest.raises(CheckpointError, match=r"'single_blocks.1.processor.proj_tt_lora.G3' has shape "
                                              rf"\[5, {D}, {R + 1}\], expected \[5, {D}, {R}\]"):
        inspect_adapter(path2)


def test_wrong_map_count(tmp_path):
    path, _ = release_like(tmp_path, maps=MapSet.parse("albedo,color,depth"))
    with pytest.raises(CheckpointError, match="i.e. 3 maps, but the file has no LumiX metadata and is read "
                                              "as the release with 5 maps"):
        inspect_adapter(path)


def test_missing_block(tmp_path):
    path, state = release_like(tmp_path)
    for f in ("G1", "G2", "G3"):
        for a in ("kv_tt_lora", "proj_tt_lora"):
            del state[f"double_blocks.1.processor.{a}.{f}"]
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="missing block 'double_blocks.1'"):
        load_adapter(path, MODEL)
    # a block missing one factor is named precisely
    path2, state2 = release_like(tmp_path, "partial.safetensors")
    del state2["single_blocks.2.processor.kv_tt_lora.G2"]
    save_file(state2, str(path2))
    with pytest.raises(CheckpointError, match="missing tensor 'single_blocks.2.processor.kv_tt_lora.G2'"):
        inspect_adapter(path2)


def test_block_beyond_model(tmp_path):
    path, _ = release_like(tmp_path, single_blocks=NS + 1)
    with pytest.raises(CheckpointError, match=f"'single_blocks.{NS}' but the model has only {NS}"):
        load_adapter(path, MODEL)


def test_extra_key(tmp_path):
    path, state = release_like(tmp_path)
    state["double_blocks.0.processor.gate"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="unexpected key 'double_blocks.0.processor.gate'"):
        inspect_adapter(path)


def test_non_flux_state_dicts(tmp_path):
    cases = {
        "sd.safetensors": ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, "non-FLUX model"),
        "lora.safetensors": ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2)},
                             "standard LoRA"),
        "flux.safetensors": ({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2)}, "a FLUX model"),
    }
    for name, (state, message) in cases.items():
        save_file(state, str(tmp_path / name))
        with pytest.raises(CheckpointError, match=message):
            inspect_adapter(tmp_path / name)


def test_truncated_file(tmp_path):
    path, _ = release_like(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        inspect_adapter(path)
    path.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        inspect_adapter(path)


def test_pickles_are_refused(tmp_path):
    _, state = release_like(tmp_path)
    fake = tmp_path / "evil.safetensors"
    torch.save(state, fake)  # zip container
    with pytest.raises(CheckpointError, match="is a pickle"):
        inspect_adapter(fake)
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(CheckpointError, match="is a pickle"):
        inspect_adapter(raw)
    pt = tmp_path / "lumix.pt"
    pt.write_bytes(b"anything")
    with pytest.raises(CheckpointError, match=r"'\.pt' files are pickles.*execute arbitrary code"):
        inspect_adapter(pt)


# ----------------------------------------------------------------------------- damaged values and metadata
def ours(tmp_path, name="mine.safetensors", **meta):
    """One of our files (with metadata), its metadata entries replaced by ``meta``."""
    adapter = randomize_(LumiXAdapter(default_spec(rank=R, hidden=D, double_blocks=ND, single_blocks=NS)))
    state = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    metadata = {"lumix.format": "1", "lumix.modalities": "albedo,irradiance,color,depth,normal", "lumix.rank": str(R),
                "lumix.alpha": "none"}
    metadata.update(meta)
    path = tmp_path / name
    save_file(state, str(path), metadata=metadata)
    return path, state


def rewrite_header(path, edit):
    """Apply ``edit(header_dict)`` to a safetensors file's JSON header, keeping the data bytes."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


BAD_KEY = "single_blocks.1.processor.kv_tt_lora.G2"


@pytest.mark.parametrize("value, what", [(float("nan"), "holds 1 NaN/inf value"),
                                         (float("inf"), "holds 1 NaN/inf value"),
                                         (1e30, "has values up to 1e\\+30, far beyond")])
def test_non_finite_or_absurd_factors_are_refused_naming_file_and_tensor(tmp_path, value, what):
    path, state = release_like(tmp_path)
    state[BAD_KEY][0, 3, 1, 2] = value
    state["single_blocks.2.processor.kv_tt_lora.G2"][0, 0, 0, 0] = value  # a later one is not the first
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=rf"^lumix.safetensors: '{BAD_KEY}' {what}.*use another adapter file"):
        load_adapter(path, MODEL)
    state = {k: v.to(torch.bfloat16) for k, v in state.items()}  # also in the dtypes we cast from
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=rf"'{BAD_KEY}' {what}"):
        load_adapter(path, MODEL)


@pytest.mark.parametrize("meta, message", [
    ({"lumix.alpha": "nan"}, r"metadata 'lumix.alpha' is 'nan', expected a positive finite number or 'none'"),
    ({"lumix.alpha": "inf"}, r"metadata 'lumix.alpha' is 'inf', expected a positive finite number"),
    ({"lumix.alpha": "-2"}, r"metadata 'lumix.alpha' is '-2', expected a positive finite number"),
    ({"lumix.alpha": "banana"}, r"metadata 'lumix.alpha' is 'banana', expected a positive number or 'none'"),
    ({"lumix.rank": "eight"}, r"metadata 'lumix.rank' is 'eight', expected an integer \(the rank, e.g. 8\)"),
    ({"lumix.modalities": "albedo,color,color,depth,normal"},
     r"metadata 'lumix.modalities' is 'albedo,color,color,depth,normal', expected the adapter's map order.*duplicate"),
    ({"lumix.format": "banana"}, r"LumiX format version 'banana' is not one this pack understands"),
])
def test_malformed_metadata_names_the_file_the_entry_and_the_fix(tmp_path, meta, message):
    path, _ = ours(tmp_path, **meta)
    with pytest.raises(CheckpointError, match=rf"^mine.safetensors: {message}"):
        load_adapter(path, MODEL)


def test_integer_or_unknown_dtype_factors_are_refused_before_loading(tmp_path):
    path, state = release_like(tmp_path)
    state["double_blocks.0.processor.kv_tt_lora.G1"] = torch.ones(5, 5, R, dtype=torch.int32)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"^lumix.safetensors: 'double_blocks.0.processor.kv_tt_lora.G1' is "
                                              r"stored as I32, but Tensor LoRA factors are floating point"):
        load_adapter(path, MODEL)
    path, _ = release_like(tmp_path, "odd.safetensors")
    rewrite_header(path, lambda h: h[BAD_KEY].update(dtype="Q4_K"))
    with pytest.raises(CheckpointError, match=rf"^odd.safetensors: '{BAD_KEY}' is stored as Q4_K, but"):
        inspect_adapter(path)


def test_overlapping_or_gapped_offsets_are_refused_with_the_file_name(tmp_path):
    path, _ = release_like(tmp_path)

    def overlap(h):
        spans = sorted((v["data_offsets"], k) for k, v in h.items() if k != "__metadata__")
        (b0, e0), _ = spans[0]
        (b1, e1), second = spans[1]
        h[second]["data_offsets"] = [b1 - 4, e1 - 4]

    rewrite_header(path, overlap)
    with pytest.raises(CheckpointError, match=r"^lumix.safetensors: corrupt header: the data of '.*' \(bytes \d+-\d+\) "
                                              r"overlaps '.*'; the file is damaged"):
        load_adapter(path, MODEL)

    path, _ = release_like(tmp_path, "gap.safetensors")

    def gap(h):
        for v in h.values():
            if isinstance(v, dict) and "data_offsets" in v and v["data_offsets"][0] > 0:
                v["data_offsets"] = [v["data_offsets"][0] + 4, v["data_offsets"][1] + 4]

    rewrite_header(path, gap)
    with pytest.raises(CheckpointError, match=r"^gap.safetensors: corrupt header: .* leaves a gap after"):
        inspect_adapter(path)


def test_a_library_read_failure_still_names_the_file(tmp_path):
    path, _ = release_like(tmp_path)
    with open(path, "ab") as f:  # trailing bytes: our header checks pass, the safetensors library refuses
        f.write(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"^lumix.safetensors: the tensors cannot be read \(SafetensorError"):
        load_adapter(path, MODEL)
