"""Relighting: Lambertian formula on an analytic sphere, light frame, options, chunking."""
import math

import numpy as np
import pytest
import torch
from analytic_scenes import sphere

from lumix_core.conventions import flip_normal_y, vectors_to_normals
from lumix_core.finish.relight import Light, light_direction, parse_color, relight

H, W, FOV = 48, 64, 40.0


def srgb_to_linear_np(x):
    x = np.clip(x, 0, None)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb_np(y):
    y = np.clip(y, 0, None)
    return np.where(y <= 0.0031308, y * 12.92, 1.055 * y ** (1 / 2.4) - 0.055)


@pytest.fixture(scope="module")
def ball():
    _, normals, hit = sphere(H, W, FOV, center=(0.0, 0.0, -3.0), radius=1.0)
    normals = torch.where(hit.unsqueeze(-1), normals, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    encoded = vectors_to_normals(normals.float().unsqueeze(0))
    g = torch.Generator().manual_seed(3)
    albedo = torch.rand(1, H, W, 3, generator=g) * 0.8 + 0.1
    return normals.numpy(), encoded, albedo


def lambert_oracle(albedo, normals, az, el, color, intensity, ambient):
    """The documented formula, written independently in numpy (float64)."""
    L = np.array([math.cos(math.radians(el)) * math.cos(math.radians(az)),
                  math.cos(math.radians(el)) * math.sin(math.radians(az)),
                  math.sin(math.radians(el))])
    lam = np.clip(normals @ L, 0, None)
    shading = ambient + intensity * np.array(color) * lam[..., None]
    return linear_to_srgb_np(np.clip(srgb_to_linear_np(albedo) * shading, 0, 1))


def test_sphere_matches_lambert_pixel_by_pixel(ball):
    normals, encoded, albedo = ball
    light = Light(azimuth_deg=30.0, elevation_deg=40.0, color=(1.0, 0.9, 0.7), intensity=0.8, ambient=0.1)
    out = relight(albedo, encoded, light)
    expected = lambert_oracle(albedo[0].double().numpy(), normals, 30.0, 40.0, (1.0, 0.9, 0.7), 0.8, 0.1)
    # the encoded normal map is float32: ~1e-7 direction error, well below 1e-5 in the result
    assert np.abs(out[0].double().numpy() - expected).max() < 1e-5


def test_light_frame_azimuth_and_elevation():
    assert torch.allclose(light_direction(0, 0), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(light_direction(90, 0), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(light_direction(123, 90), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-12)


def test_azimuth_zero_lights_the_right_side_and_90_the_top(ball):
    _, encoded, _ = ball
    grey = torch.full((1, H, W, 3), 0.5)
    mid_r, mid_c = H // 2, W // 2
    right = relight(grey, encoded, Light(0.0, 10.0))
    assert right[0, mid_r, mid_c + 8].mean() > right[0, mid_r, mid_c - 8].mean() + 0.2
    top = relight(grey, encoded, Light(90.0, 10.0))
    assert top[0, mid_r - 8, mid_c].mean() > top[0, mid_r + 8, mid_c].mean() + 0.2  # row 0 is the top
    frontal = relight(grey, encoded, Light(0.0, 90.0))[0].mean(-1)
    assert frontal[mid_r - 1 : mid_r + 1, mid_c - 1 : mid_c + 1].min() >= frontal.max() - 1e-3


def test_directx_normals_give_the_same_light(ball):
    _, encoded, albedo = ball
    light = Light(200.0, 35.0)
    gl = relight(albedo, encoded, light)
    dx = relight(albedo, flip_normal_y(encoded), light, normal_convention="directx")
    assert torch.allclose(gl, dx, atol=1e-6)


def test_row_chunks_and_batches_do_not_change_the_result(ball):
    _, encoded, albedo = ball
    depth = torch.linspace(0, 1, H).view(1, H, 1).expand(1, H, W).contiguous()
    irradiance = torch.rand(1, H, W, 3)
    light = Light(10.0, 20.0, ambient=0.05)
    kwargs = dict(depth=depth, irradiance=irradiance, falloff=2.0, keep_shading=0.5)
    whole = relight(albedo, encoded, light, chunk_rows=H, **kwargs)
    assert torch.allclose(relight(albedo, encoded, light, chunk_rows=5, **kwargs), whole, atol=1e-6)
    batch = relight(torch.cat([albedo, 1 - albedo]), encoded.repeat(2, 1, 1, 1), light,
                    depth=depth.repeat(2, 1, 1), irradiance=irradiance.repeat(2, 1, 1, 1),
                    falloff=2.0, keep_shading=0.5, chunk_rows=7)
    assert torch.allclose(batch[:1], whole, atol=1e-6)
    assert torch.allclose(batch[1:], relight(1 - albedo, encoded, light, **kwargs), atol=1e-6)


def test_depth_falloff_follows_the_documented_formula():
    h, w = 4, 6
    flat = vectors_to_normals(torch.tensor([0.0, 0.0, 1.0]).expand(1, h, w, 3))
    albedo = torch.full((1, h, w, 3), 0.8)
    depth = torch.rand(1, h, w)
    az, el, k = 30.0, 50.0, 1.5
    out = relight(albedo, flat, Light(az, el), depth=depth, falloff=k)[0].double().numpy()
    L = light_direction(az, el).numpy()
    t0 = (w / h) * abs(L[0]) + abs(L[1]) + max(0.0, -L[2])
    u = (np.arange(w) + 0.5 - w / 2) / (h / 2)
    v = -(np.arange(h) + 0.5 - h / 2) / (h / 2)
    z = 1.0 - depth[0].double().numpy()
    t = t0 - (u[None, :] * L[0] + v[:, None] * L[1] - z * L[2])
    shading = max(0.0, L[2]) / (1 + k * t) ** 2
    expected = linear_to_srgb_np(np.clip(srgb_to_linear_np(0.8) * shading, 0, 1))
    assert np.abs(out - expected[..., None]).max() < 1e-5
    # no falloff strength = no depth
    assert torch.equal(relight(albedo, flat, Light(az, el), depth=depth, falloff=0.0),
                       relight(albedo, flat, Light(az, el)))


def test_keep_shading_applies_the_irradiance_ratio():
    h, w = 4, 8
    flat = vectors_to_normals(torch.tensor([0.0, 0.0, 1.0]).expand(1, h, w, 3))
    albedo = torch.full((1, h, w, 3), 0.5)
    light = Light(0.0, 60.0)
    plain = relight(albedo, flat, light)
    uniform = relight(albedo, flat, light, irradiance=torch.full((1, h, w, 3), 0.3), keep_shading=1.0)
    assert torch.allclose(uniform, plain, atol=1e-6)
    shadow = torch.full((1, h, w, 3), 0.8)
    shadow[:, :, : w // 2] = 0.2  # left half in shadow
    kept = relight(albedo, flat, light, irradiance=shadow, keep_shading=1.0)
    assert kept[0, 0, 0].mean() < plain[0, 0, 0].mean() - 0.1 < kept[0, 0, -1].mean() - 0.1
    assert torch.allclose(relight(albedo, flat, light, irradiance=shadow, keep_shading=0.0), plain)


def test_bad_inputs():
    a = torch.rand(1, 4, 4, 3)
    with pytest.raises(ValueError, match="same batch size and resolution"):
        relight(a, torch.rand(1, 4, 5, 3), Light())
    with pytest.raises(ValueError, match="elevation"):
        Light(elevation_deg=120)
    with pytest.raises(ValueError, match="keep_shading"):
        relight(a, a, Light(), keep_shading=2.0)
    assert parse_color("#FFFFFF") == pytest.approx((1.0, 1.0, 1.0))
    assert parse_color("0.5, 1, 2") == (0.5, 1.0, 2.0)
    with pytest.raises(ValueError, match="#RRGGBB"):
        parse_color("orange")
