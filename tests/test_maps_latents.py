import pytest
import torch

from lumix_core.latents import check_size, latent_in, latent_out, pack, unpack
from lumix_core.maps import RELEASE, MapSet, canonical, check_group_batch


def test_release_order_and_aliases():
    assert RELEASE.names == ("albedo", "irradiance", "color", "depth", "normal")
    assert RELEASE.query_index == 2
    assert canonical("diffuse_reflectance") == "albedo" and canonical("Diffuse_Illumination") == "irradiance"
    assert RELEASE.index("diffuse_illumination") == 1
    assert RELEASE.folder_name("albedo") == "diffuse_reflectance"


def test_custom_map_sets():
    maps = MapSet.parse("albedo, color, depth, roughness")
    assert maps.size == 4 and maps.query_index == 1 and "roughness" in maps
    assert MapSet.parse(maps.to_string()) == maps
    with pytest.raises(ValueError, match="no 'color' map"):
        MapSet.parse("albedo,depth")
    with pytest.raises(ValueError, match="duplicate"):
        MapSet.parse("albedo,diffuse_reflectance,color")
    with pytest.raises(KeyError, match="not in the map set"):
        maps.index("normal")


def test_group_batch_message():
    assert check_group_batch(10, 5) == 2
    with pytest.raises(ValueError, match="batch of 12 is not a multiple of the map count 5"):
        check_group_batch(12, 5)


def test_pack_unpack_and_scaling_round_trip():
    x = torch.randn(3, 16, 8, 12)
    assert torch.equal(unpack(pack(x), 8, 12), x)
    assert pack(x).shape == (3, 24, 64)
    torch.testing.assert_close(latent_out(latent_in(x)), x)
    assert latent_in(torch.full((1,), 0.1159)).abs().item() < 1e-7


def test_size_check_message():
    check_size(512, 768)
    with pytest.raises(ValueError, match=r"width 500 not a multiple of 16 pixels.*Use e.g. 496x512"):
        check_size(500, 512)
