"""The toy model's fixed VAE, text encoder and Encoder plug (no training, milliseconds)."""
from __future__ import annotations

import pytest
import torch

from lumix_core.latents import LATENT_CHANNELS, pack
from lumix_core.toy import vae
from lumix_core.toy.encoder import ToyEncoder
from lumix_core.toy.text import MAX_TOKENS, PromptError, ToyTextEncoder
from lumix_core.train.encoder import Encoder
from lumix_core.world.scene import caption_tokens, caption_vocabulary, sample_scene


def test_vae_basis_is_orthonormal_and_flux_shaped():
    b = vae.basis()
    assert b.shape == (LATENT_CHANNELS, 3 * vae.FACTOR ** 2)
    assert torch.allclose(b @ b.T, torch.eye(LATENT_CHANNELS), atol=1e-5)
    z = vae.encode(torch.rand(2, 64, 64, 3))
    assert z.shape == (2, LATENT_CHANNELS, 16, 16)
    assert pack(z).shape == (2, 64, 64)  # 64 tokens of FLUX's 64 features


def test_vae_round_trip_is_exact_inside_its_subspace_and_smooths_outside():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, LATENT_CHANNELS, 4, 4, generator=g)
    assert torch.allclose(vae.encode((vae.decode(z) + 1) / 2), z, atol=1e-5)  # projection of a projection
    flat = torch.full((1, 16, 16, 3), 0.3)
    assert torch.allclose(vae.round_trip(flat), flat, atol=1e-5)  # constant colour = DC only
    noise = torch.rand(1, 16, 16, 3, generator=g)
    assert (vae.round_trip(noise) - noise).abs().mean() > 0.05  # per-pixel noise is mostly high frequency


def test_vae_refuses_sizes_that_do_not_make_whole_tokens():
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(torch.rand(1, 60, 64, 3))


def test_vocabulary_covers_sampled_captions_within_max_tokens():
    vocab = set(caption_vocabulary())
    longest = 0
    for seed in range(400):
        words = caption_tokens(sample_scene(seed).caption)
        assert set(words) <= vocab
        longest = max(longest, len(words))
    assert longest <= MAX_TOKENS


def test_text_encoder_shapes_padding_and_empty_caption():
    enc = ToyTextEncoder()
    txt, y = enc.encode(["a red sphere on a gray floor, light from the left", ""])
    assert txt.shape == (2, MAX_TOKENS, enc.dim) and y.shape == (2, enc.dim)
    assert torch.count_nonzero(y[1]) == 0  # the empty caption pools to zeros (the CFG negative)
    assert torch.equal(enc.tokenize(["A RED sphere."]), enc.tokenize(["a red sphere"]))


def test_a_seeded_text_encoder_is_fixed_by_its_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(1)
    expected_next = torch.rand(3)
    torch.manual_seed(1)
    first = ToyTextEncoder(seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # the global stream went on as if nothing had drawn
    again, other = ToyTextEncoder(seed=7), ToyTextEncoder(seed=8)
    assert torch.equal(first.words.weight, again.words.weight) and torch.equal(first.positions, again.positions)
    assert not torch.equal(first.words.weight, other.words.weight)


def test_unknown_words_are_refused_with_suggestions_and_the_vocabulary():
    enc = ToyTextEncoder()
    with pytest.raises(PromptError) as info:
        enc.check_prompt("a crimson sphrere on a gray floor")
    msg = str(info.value)
    assert "'crimson'" in msg and "'sphrere'" in msg and "did you mean sphere" in msg
    assert "Known words:" in msg and "checkered" in msg


def test_text_encoder_file_round_trip(tmp_path):
    enc = ToyTextEncoder()
    path = enc.save(tmp_path / "text.safetensors")
    again = ToyTextEncoder.load(path)
    a, b = enc.encode(["a blue box"]), again.encode(["a blue box"])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and again.vocabulary == enc.vocabulary
    with pytest.raises(FileExistsError):
        enc.save(path)


def test_toy_encoder_is_a_trainer_encoder():
    enc = ToyEncoder(ToyTextEncoder())
    assert isinstance(enc, Encoder)
    lat = enc.encode_images(torch.rand(5, 32, 32, 3))
    assert lat.shape == (5, LATENT_CHANNELS, 8, 8)
    txt, y = enc.encode_text(["a red box"])
    assert txt.shape[0] == 1 and y.shape[0] == 1 and "text_sha256" in enc.describe()


def test_channel_scale_still_matches_the_world():
    """CHANNEL_STD was measured on stream-1 scenes; on other scenes every scaled channel's
    spread must stay within a factor 1.5 of 1 (else the world changed: re-measure it)."""
    from lumix_core.world.dataset import scene_seed
    from lumix_core.world.render import render

    latents = []
    for i in range(12):
        maps = render(sample_scene(scene_seed(7, i)), 64).encode()  # the toy's size: spread depends on it
        latents += [vae.encode(torch.from_numpy(v)[None]) for v in maps.values()]
    std = torch.cat(latents).std(dim=(0, 2, 3))
    assert bool(((std > 1 / 1.5) & (std < 1.5)).all()), std


def test_vae_basis_made_in_inference_mode_still_serves_autograd():
    """``lumix decompose`` runs in inference mode and may build the cached basis first; the
    one-step pixel losses in the same process then differentiate through it."""
    vae.basis.cache_clear()
    with torch.inference_mode():
        vae.decode(torch.zeros(1, 16, 2, 2))
    latents = torch.zeros(1, 16, 2, 2, requires_grad=True)
    vae.decode(latents).sum().backward()
    assert latents.grad is not None
