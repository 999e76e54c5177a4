"""Map conventions: normals, depth, colour, splitting decoded batches."""
import numpy as np
import pytest
import torch

from lumix_core.conventions import (
    MAP_ENCODINGS,
    conventions_metadata,
    finish_map,
    finish_maps,
    flip_normal_y,
    linear_to_srgb,
    normalize_depth,
    normals_to_vectors,
    renormalize_normals,
    split_groups,
    srgb_to_linear,
    vectors_to_normals,
)
from lumix_core.maps import RELEASE, RELEASE_MAPS, MapSet


def unit(v):
    return v / v.norm(dim=-1, keepdim=True)


def test_srgb_known_values_and_round_trip():
    x = torch.tensor([0.0, 0.04045, 0.5, 1.0])
    lin = srgb_to_linear(x)
    assert torch.allclose(lin, torch.tensor([0.0, 0.04045 / 12.92, 0.214041, 1.0]), atol=1e-6)
    grid = torch.linspace(0, 1, 1001)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(grid)), grid, atol=1e-6)


def test_renormalize_gives_unit_vectors_and_reports_deviation():
    n = unit(torch.randn(2, 8, 8, 3))
    length = torch.rand(2, 8, 8) * 0.6 + 0.7  # 0.7 .. 1.3
    encoded = ((n * length.unsqueeze(-1)).clamp(-1, 1) + 1) / 2
    clipped_len = (encoded * 2 - 1).norm(dim=-1)
    out, deviation = renormalize_normals(encoded)
    vec = out * 2 - 1
    assert torch.allclose(vec.norm(dim=-1), torch.ones(2, 8, 8), atol=1e-6)
    assert torch.allclose(deviation, (clipped_len - 1).abs(), atol=1e-6)
    # the direction is kept
    assert torch.allclose(vec, unit(encoded * 2 - 1), atol=1e-6)


def test_zero_normal_falls_back_to_facing_camera():
    out, deviation = renormalize_normals(torch.full((1, 1, 1, 3), 0.5))
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.5, 0.5, 1.0]))
    assert deviation.item() == pytest.approx(1.0)


def test_gl_dx_switch_flips_exactly_one_axis():
    encoded = torch.rand(2, 5, 6, 3)
    flipped = flip_normal_y(encoded)
    assert torch.equal(flipped[..., 0], encoded[..., 0])
    assert torch.equal(flipped[..., 2], encoded[..., 2])
    assert torch.allclose(flipped[..., 1], 1 - encoded[..., 1])
    assert torch.allclose(flip_normal_y(flipped), encoded)
    # as vectors: the same surface read in either convention gives the same GL vectors
    vectors = unit(torch.randn(1, 4, 4, 3))
    gl = vectors_to_normals(vectors, "opengl")
    dx = vectors_to_normals(vectors, "directx")
    assert torch.allclose(dx, flip_normal_y(gl))
    assert torch.allclose(normals_to_vectors(dx, "directx"), normals_to_vectors(gl, "opengl"), atol=1e-6)
    # finish_map with the switch = OpenGL result with Y flipped, nothing else
    raw = torch.rand(1, 4, 4, 3)
    assert torch.allclose(
        finish_map("normal", raw, normal_convention="directx").image,
        flip_normal_y(finish_map("normal", raw).image),
    )


def test_depth_is_single_channel_near_bright_min_max_per_image():
    d = torch.stack([torch.linspace(0.2, 0.6, 20).view(4, 5), torch.linspace(0.9, 0.1, 20).view(4, 5)])
    img = d.unsqueeze(-1).repeat(1, 1, 1, 3)
    out = finish_map("depth", img)
    assert out.mask.shape == (2, 4, 5) and out.image.shape == (2, 4, 5, 3)
    assert torch.allclose(out.image, out.mask.unsqueeze(-1).expand(2, 4, 5, 3))
    for i in range(2):
        assert out.mask[i].min().item() == pytest.approx(0.0) and out.mask[i].max().item() == pytest.approx(1.0)
        # near = bright is kept: the order of the input values is preserved
        assert torch.equal(out.mask[i].flatten().argsort(), d[i].flatten().argsort())
    inverted = finish_map("depth", img, depth_invert=True)
    assert torch.allclose(inverted.mask, 1 - out.mask)


def test_depth_percentiles_ignore_outliers_and_flat_depth_is_zero():
    d = torch.linspace(0.3, 0.5, 100).view(1, 10, 10).clone()
    d[0, 0, 0] = 1.0  # one outlier
    plain = normalize_depth(d)
    robust = normalize_depth(d, percentiles=(2, 98))
    assert plain[0, 5, 5] < 0.45  # squashed by the outlier
    values = d.flatten().numpy()
    lo, hi = np.percentile(values, 2, method="nearest"), np.percentile(values, 98, method="nearest")
    assert robust[0, 5, 5].item() == pytest.approx((values[55] - lo) / (hi - lo), abs=1e-6)
    assert plain[0, 5, 5] < robust[0, 5, 5] - 0.2
    assert robust.max() == 1.0 and robust.min() == 0.0
    assert torch.equal(normalize_depth(torch.full((1, 3, 3), 0.7)), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="percentiles"):
        normalize_depth(d, percentiles=(50, 10))


def test_finish_maps_from_decoded_range():
    decoded = {name: torch.rand(2, 6, 7, 3) * 2 - 1 for name in RELEASE_MAPS}
    decoded["color"][0, 0, 0] = torch.tensor([-1.5, 2.0, 0.0])  # out of range values are clamped
    out = finish_maps(decoded)
    assert list(out) == list(RELEASE_MAPS)
    assert torch.allclose(out["albedo"].image, (decoded["albedo"] + 1) / 2)
    assert out["color"].image.min() >= 0 and out["color"].image.max() <= 1
    assert torch.allclose((out["normal"].image * 2 - 1).norm(dim=-1), torch.ones(2, 6, 7), atol=1e-6)
    assert out["normal"].deviation.shape == (2, 6, 7) and "normal_deviation_mean" in out["normal"].info
    assert out["depth"].mask.shape == (2, 6, 7)


def test_split_groups_order_and_error():
    m = len(RELEASE)
    batch = torch.arange(3 * m, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 2, 3)
    maps = split_groups(batch, RELEASE)
    assert list(maps) == list(RELEASE.names)
    for i, name in enumerate(RELEASE.names):
        assert maps[name].shape == (3, 2, 2, 3)
        assert maps[name][:, 0, 0, 0].tolist() == [float(i), float(i + m), float(i + 2 * m)]
    custom = split_groups(batch[:4], MapSet.parse("albedo,color"))
    assert custom["color"][:, 0, 0, 0].tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="not a multiple of the map count 5"):
        split_groups(batch[:7], RELEASE)


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match=r"\[N,H,W,C\]"):
        finish_map("albedo", torch.rand(4, 4, 3))
    with pytest.raises(ValueError, match="channels"):
        finish_map("normal", torch.rand(1, 4, 4, 2))
    with pytest.raises(ValueError, match="normal convention"):
        finish_map("normal", torch.rand(1, 4, 4, 3), normal_convention="vulkan")
    with pytest.raises(TypeError, match="torch tensor"):
        finish_map("color", [[0.0]])


def test_metadata_covers_the_released_maps():
    assert set(MAP_ENCODINGS) == set(RELEASE_MAPS)
    meta = conventions_metadata("directx", depth_invert=True, depth_percentiles=(2, 98))
    assert meta["normal_convention"] == "directx" and "Y down" in meta["normal_frame"]
    assert meta["depth_polarity"] == "far = bright"
    assert "2-98" in meta["depth_normalisation"]
