"""Streaming statistics: prefix encoding equals full encoding, the preserve cache is reused and
keyed right, guidance and rank truncation do what their docstrings say."""

import pytest
import torch

from editflow.edits import ConceptSpec, EraseRequest, get_method
from editflow.edits.closed_form import EditStatistics, solve_edit
from editflow.edits.conditioning import encode, encode_features, token_count
from editflow.edits.streaming import PreserveCache, stream_statistics
from tests.tiny import tiny_sd_pipeline


@pytest.fixture()
def pipe(tmp_path, world):
    return tiny_sd_pipeline(tmp_path, world)


def _req(**kw):
    base = {"concepts": [ConceptSpec("star", ("asterisk",), "shape")], "preserve": ["circle", "moon"],
            "templates": ("a {}", "a red {} on a blue background")}
    return EraseRequest(**{**base, **kw})


@pytest.mark.parametrize("fixture", ["pipe", "embedded_pipe"])
def test_prefix_features_equal_full_features(fixture, request):
    pipe = request.getfixturevalue(fixture)
    prompts = ["a red star", "a picture of zorbo with a crown", ""]
    n = token_count(pipe, prompts)
    full, short = encode(pipe, prompts), encode_features(pipe, prompts, length=n)
    assert short.shape == (3, n, full.shape[-1]) and n < full.shape[1]
    assert torch.allclose(short, full[:, :n], atol=1e-5)
    assert torch.allclose(encode_features(pipe, prompts), full, atol=1e-5)


def test_repeated_prompts_are_encoded_once_with_the_same_features(pipe):
    """An erase set's anchored prompts repeat; each is encoded once and handed to every row."""
    from editflow.edits.streaming import _once_each

    seen = []

    def enc(prompts, length):
        seen.append(list(prompts))
        return encode_features(pipe, prompts, length=length)

    prompts = ["a shape", "a red star", "a shape", "", "a shape", ""]
    n = token_count(pipe, prompts)
    got = _once_each(enc, prompts, n)
    assert seen == [["a shape", "a red star", ""]]
    assert torch.allclose(got, encode_features(pipe, prompts, length=n), atol=1e-6)
    assert _once_each(enc, ["a", "b"], None).shape[0] == 2 and seen[-1] == ["a", "b"]


def test_last_policy_statistics_match_full_length(pipe, monkeypatch):
    """The short-sequence path gives the statistics the full-length path gives."""
    req = _req(token_policy="last")
    short = stream_statistics(pipe, req).stats
    import editflow.edits.streaming as streaming

    monkeypatch.setattr(streaming, "is_clip_family", lambda p: False)
    full = stream_statistics(pipe, req).stats
    for a, b in [(short.erase_gram, full.erase_gram), (short.cross, full.cross),
                 (short.preserve_gram, full.preserve_gram)]:
        assert torch.allclose(a, b, atol=1e-4 * b.abs().max().item())
    assert (short.n_erase, short.n_preserve) == (full.n_erase, full.n_preserve)


@pytest.mark.parametrize("context", [False, True])
def test_preserve_cache_reuses_statistics(pipe, tmp_path, context):
    cache = PreserveCache(tmp_path / "cache")
    req = _req()
    calls = []
    first = stream_statistics(pipe, req, cache=cache, preserve_context=context)
    assert len(list((tmp_path / "cache").glob("preserve-*.safetensors"))) == 1
    second = stream_statistics(pipe, req, cache=cache, preserve_context=context, progress=calls.append)
    assert torch.equal(first.stats.preserve_gram, second.stats.preserve_gram)
    assert first.stats.n_preserve == second.stats.n_preserve
    assert sum(calls) == len(req.templates) * (len(req.concepts[0].words) + len(req.preserve))
    # another erased concept reuses the same preserve entry
    stream_statistics(pipe, _req(concepts=[ConceptSpec("heart")]), cache=cache, preserve_context=context)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_preserve_cache_key_changes_with_prompts_and_encoder(pipe, tmp_path, world):
    cache = PreserveCache(tmp_path)
    k = cache.key(pipe, _req(), False, 4096)
    assert k == cache.key(pipe, _req(), False, 4096)
    assert k != cache.key(pipe, _req(preserve=["circle"]), False, 4096)
    assert k != cache.key(pipe, _req(token_policy="last"), False, 4096)
    assert k != cache.key(pipe, _req(), True, 4096)
    other = tiny_sd_pipeline(tmp_path / "other", world, seed=1)
    assert k != cache.key(other, _req(), False, 4096)


def test_corrupt_cache_entry_is_recomputed(pipe, tmp_path):
    cache = PreserveCache(tmp_path)
    req = _req()
    good = stream_statistics(pipe, req, cache=cache).stats.preserve_gram
    path = next(tmp_path.glob("preserve-*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    again = stream_statistics(pipe, req, cache=cache).stats.preserve_gram
    assert torch.equal(good, again)
    assert path.stat().st_size > 100  # rewritten


def test_guidance_steps_targets_past_the_anchor(pipe):
    req = _req(preserve=[])
    plain = stream_statistics(pipe, req).stats
    guided = stream_statistics(pipe, req, guidance=1.0).stats
    # D = Σ (c* - c) cᵀ and c* - c = (1 + η)(a - c): the cross term doubles at η = 1
    assert torch.allclose(guided.cross, 2 * plain.cross, atol=1e-6 * plain.cross.abs().max().item())
    assert torch.equal(guided.erase_gram, plain.erase_gram)


def test_rank_energy_truncates_to_the_dominant_directions():
    d = 32
    g = torch.Generator().manual_seed(0)
    stats = EditStatistics.zeros(d)
    c = torch.randn(20, d, generator=g, dtype=torch.float64)
    stats.add_erase(c, c + torch.randn(20, d, generator=g, dtype=torch.float64))
    W = {"w": torch.randn(8, d, generator=g)}
    full = solve_edit(W, stats, 0.5, 1.0, 1.0)
    cut = solve_edit(W, stats, 0.5, 1.0, 1.0, energy=0.9)
    assert full.rank == 20 and 0 < cut.rank < full.rank
    err = (full.delta("w") - cut.delta("w")).norm() / full.delta("w").norm()
    assert err < 0.5  # dropped directions hold <= 10 % of N's energy (up to W's gain)
    with pytest.raises(ValueError, match="energy"):
        solve_edit(W, stats, 0.5, 1.0, 1.0, energy=0.0)


def test_ace_config_validates_new_fields():
    cfg_cls = get_method("ace").config_class
    with pytest.raises(ValueError, match="guidance"):
        cfg_cls(guidance=-1)
    with pytest.raises(ValueError, match="rank_energy"):
        cfg_cls(rank_energy=1.5)
