"""Consistency report: normals from depth on analytic scenes, edge agreement, the report."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from analytic_scenes import plane, sphere

from lumix_core.conventions import linear_to_srgb, srgb_to_linear, vectors_to_normals
from lumix_core.finish.consistency import (
    HEATMAP_NAMES,
    angular_error_deg,
    consistency_report,
    depth_from_relative,
    edge_agreement,
    normals_from_depth,
)

FOV = 50.0


def test_plane_normals_from_depth_are_exact():
    z, n = plane(40, 56, 70.0)
    derived = normals_from_depth(z.float(), 70.0).double()
    # differences of points on a plane lie in the plane: only float32 rounding remains
    assert angular_error_deg(derived, n.expand_as(derived)).max() < 0.01


def test_sphere_normals_from_depth_match_analytic_normals():
    z, n, hit = sphere(96, 128, FOV, center=(0.0, 0.0, -3.0), radius=0.8)  # inside the frame
    z = torch.where(hit, z, torch.full_like(z, 10.0))
    derived = normals_from_depth(z.float(), FOV).double()
    # pixels whose 5x5 neighbourhood is on the sphere and that face the camera (n_z > 0.5)
    inner = (-F.max_pool2d(-hit.double()[None, None], 5, 1, 2)[0, 0] > 0.5) & (n[..., 2] > 0.5)
    angles = angular_error_deg(derived, n)[inner]
    assert inner.sum() > 500
    assert angles.mean() < 0.1 and angles.max() < 0.5  # central differences on a curved surface


def test_normals_from_depth_refuses_relative_or_bad_depth():
    with pytest.raises(ValueError, match="positive distances"):
        normals_from_depth(torch.zeros(4, 4), FOV)
    with pytest.raises(ValueError, match=r"\[H,W\]"):
        normals_from_depth(torch.ones(1, 4, 4), FOV)
    with pytest.raises(ValueError, match="field of view"):
        normals_from_depth(torch.ones(4, 4), 180.0)


def test_depth_from_relative_readings():
    rel = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(depth_from_relative(rel, 0.25, "linear"), torch.tensor([1.0, 0.625, 0.25]))
    assert torch.allclose(depth_from_relative(rel, 0.25, "disparity"), torch.tensor([1.0, 0.4, 0.25]))
    with pytest.raises(ValueError, match="near_far_ratio"):
        depth_from_relative(rel, 1.5)


def test_edge_agreement():
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(48, 48, 1)
    base[10:30, 12:40] = 1.0
    base[34:44, 5:20] = 0.5
    assert edge_agreement(base, base) == pytest.approx(1.0)
    assert edge_agreement(base, 0.2 * base.repeat(1, 1, 3) + 0.3) == pytest.approx(1.0, abs=1e-6)
    shifted = torch.roll(base, shifts=(1, 1), dims=(0, 1))
    assert edge_agreement(base, shifted) > 0.6  # one pixel off: still mostly the same edges
    unrelated = torch.zeros(48, 48, 1)
    unrelated[3:8, 30:45] = 1.0
    assert edge_agreement(base, unrelated) < 0.2
    assert edge_agreement(base, torch.rand(48, 48, 3, generator=g)) < 0.3
    assert edge_agreement(torch.zeros(8, 8, 3), torch.ones(8, 8, 1)) == 1.0
    assert edge_agreement(torch.zeros(48, 48, 3), base) == 0.0
    with pytest.raises(ValueError, match="sizes differ"):
        edge_agreement(base, base[:10])


def synthetic_scene(h=64, w=80):
    """Perfectly consistent maps of a large sphere filling the frame (one scene)."""
    z, n, hit = sphere(h, w, FOV, center=(0.3, 0.2, -3.0), radius=2.6)
    assert hit.all()
    relative = (z.max() - z) / (z.max() - z.min())  # near = bright, linear in depth
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pattern = ((xx // 10 + yy // 12) % 2).double()
    albedo = 0.25 + 0.5 * pattern.unsqueeze(-1) * torch.tensor([0.9, 0.6, 0.4], dtype=torch.float64) + 0.1
    L = torch.tensor([0.4, 0.5, 0.77], dtype=torch.float64)
    irr_lin = (0.15 + 0.7 * (n @ (L / L.norm())).clamp(min=0)).unsqueeze(-1).expand(h, w, 3)
    color_lin = srgb_to_linear(albedo) * irr_lin * 1.3  # exposure differs from the product
    assert color_lin.max() < 1
    maps = {
        "albedo": albedo,
        "irradiance": linear_to_srgb(irr_lin),
        "color": linear_to_srgb(color_lin),
        "depth": relative.unsqueeze(-1).expand(h, w, 3),
        "normal": vectors_to_normals(n),
    }
    return {k: v.float().unsqueeze(0).contiguous() for k, v in maps.items()}, float(z.min() / z.max())


def test_report_on_consistent_maps_is_near_zero():
    maps, true_ratio = synthetic_scene()
    report, heat = consistency_report(maps, fov_deg=FOV)
    json.dumps(report)  # JSON-able
    scene = report["scenes"][0]
    assert scene["skipped"] == []
    assert scene["normal_deviation"]["mean"] < 1e-6 and scene["normal_deviation"]["p95"] < 1e-6
    assert scene["recompose"]["relative_rms"] < 1e-4
    assert scene["recompose"]["scale"] == pytest.approx(1.3, rel=1e-4)
    assert scene["depth_normal"]["mean_deg"] < 0.5
    assert scene["depth_normal"]["near_far_ratio"] == pytest.approx(true_ratio, abs=0.01)
    assert scene["depth_normal"]["depth_model"] == "linear"
    assert scene["edge_agreement"]["albedo"] > 0.9
    assert set(heat) == set(HEATMAP_NAMES) and all(v.shape == (1, 64, 80, 3) for v in heat.values())
    # the known true ratio gives the same answer without fitting
    fixed, _ = consistency_report(maps, fov_deg=FOV, near_far_ratio=true_ratio, depth_model="linear")
    assert fixed["scenes"][0]["depth_normal"]["mean_deg"] < 0.5


def test_report_on_corrupted_maps_is_large():
    maps, _ = synthetic_scene()
    clean, clean_heat = consistency_report(maps, fov_deg=FOV)
    bad = dict(maps)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    turn = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # 30 degrees about Y
    bad["normal"] = ((maps["normal"] * 2 - 1) @ turn.T * 0.7 + 1) / 2  # turned and 30 % too short
    bad["irradiance"] = torch.flip(maps["irradiance"], dims=[2])
    bad["albedo"] = torch.roll(maps["albedo"], shifts=(5, 4), dims=(1, 2))
    report, heat = consistency_report(bad, fov_deg=FOV)
    scene, ref = report["scenes"][0], clean["scenes"][0]
    assert scene["normal_deviation"]["mean"] == pytest.approx(0.3, abs=1e-3)
    assert scene["recompose"]["relative_rms"] > 0.1
    assert scene["depth_normal"]["mean_deg"] > 20.0
    assert scene["edge_agreement"]["albedo"] < ref["edge_agreement"]["albedo"] - 0.3
    for name in HEATMAP_NAMES:
        assert heat[name].mean() > clean_heat[name].mean() + 0.05


def test_report_skips_checks_without_their_maps_and_downsizes():
    maps, _ = synthetic_scene(64, 80)
    report, heat = consistency_report({"color": maps["color"], "depth": maps["depth"]}, analysis_size=40)
    scene = report["scenes"][0]
    assert len(scene["skipped"]) == 3 and "edge_agreement" in scene
    assert report["settings"]["analysis_size"] == [32, 40]
    assert all(v.shape == (1, 32, 40, 3) and v.max() == 0 for v in heat.values())
