"""Properties of the closed-form core that could fail: zero edits, targets hit, preservation,
exact revert, refused bad solves, agreement with the published per-layer UCE formula."""

import pytest
import torch

from editflow.edits import ConceptSpec, EraseRequest, Patch, available, get_method
from editflow.edits.ace import ACEConfig
from editflow.edits.closed_form import EditStatistics, solve_edit
from editflow.edits.solve import SolveError, solve_right
from editflow.edits.targets import TargetSpec
from editflow.edits.uce import UCEConfig
from editflow.errors import EditflowError
from tests.tiny import tiny_sd_pipeline


@pytest.fixture()
def pipe(tmp_path, world):
    return tiny_sd_pipeline(tmp_path, world)


def _rand(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_nothing_to_erase_leaves_weights_unchanged(pipe):
    before = {n: m.weight.clone() for n, m in TargetSpec().find(pipe.unet).items()}
    patch = get_method("uce").compute(pipe, EraseRequest(concepts=[], preserve=["circle"]), UCEConfig())
    assert patch.edit.rank == 0
    with patch.apply(pipe, mode="merge"):
        for n, m in TargetSpec().find(pipe.unet).items():
            assert torch.equal(m.weight, before[n])


def test_erased_embedding_maps_to_its_target():
    d, out = 16, 12
    W = _rand(out, d, 0).float()
    c, target = _rand(5, d, 1), _rand(5, d, 2)
    stats = EditStatistics.zeros(d)
    stats.add_erase(c, target)
    edit = solve_edit({"w": W}, stats, lam=1e-6, erase_scale=1.0, preserve_scale=0.0)
    W_new = W.double() + edit.delta("w").double()
    assert torch.allclose(W_new @ c.T, W.double() @ target.T, atol=1e-3)
    assert edit.rank == 5  # low rank by construction


def test_preserved_embeddings_barely_move():
    d, out = 16, 12
    W = _rand(out, d, 0).float()
    stats = EditStatistics.zeros(d)
    stats.add_erase(_rand(2, d, 1), _rand(2, d, 2))
    keep = _rand(8, d, 3)
    stats.add_preserve(keep)
    edit = solve_edit({"w": W}, stats, lam=0.5, erase_scale=1.0, preserve_scale=1e4)
    moved = (edit.delta("w").double() @ keep.T).norm() / (W.double() @ keep.T).norm()
    assert moved < 1e-2


def test_matches_published_per_layer_uce_formula():
    d, out = 16, 10
    W = _rand(out, d, 0)
    c, guide, keep = _rand(4, d, 1), _rand(4, d, 2), _rand(6, d, 3)
    lam, se, sp = 0.5, 1.0, 1.0
    # W = (λ W_old + s_e Σ v* cᵀ + s_p Σ (W_old c_j) c_jᵀ)(λI + s_e Σ c cᵀ + s_p Σ c_j c_jᵀ)⁻¹, v* = W_old c*
    lhs = lam * W + se * (W @ guide.T) @ c + sp * (W @ keep.T) @ keep
    rhs = lam * torch.eye(d, dtype=torch.float64) + se * c.T @ c + sp * keep.T @ keep
    reference = lhs @ torch.linalg.inv(rhs)
    stats = EditStatistics.zeros(d)
    stats.add_erase(c, guide)
    stats.add_preserve(keep)
    edit = solve_edit({"w": W.float()}, stats, lam, se, sp)
    assert torch.allclose(W + edit.delta("w").double(), reference, atol=1e-4)


def test_nan_and_ill_conditioned_solves_are_refused():
    A = torch.eye(4, dtype=torch.float64)
    A[0, 0] = float("nan")
    with pytest.raises(SolveError, match="NaN"):
        solve_right(A, torch.ones(2, 4))
    rank_one = _rand(1, 4, 0).T @ _rand(1, 4, 0)
    with pytest.raises(SolveError, match="positive definite|ill-conditioned"):
        solve_right(rank_one + 1e-15 * torch.eye(4, dtype=torch.float64), torch.ones(2, 4))


@pytest.mark.parametrize("method, config, mode", [("uce", UCEConfig(), "merge"), ("ace", ACEConfig(), "gated"),
                                                  ("ace", ACEConfig(gated=False), "merge")])
def test_apply_changes_output_and_revert_is_exact(pipe, method, config, mode):
    req = EraseRequest([ConceptSpec("star", ("pentagram",), anchor="shape")], preserve=["circle", "heart"])
    patch = get_method(method).compute(pipe, req, config)
    assert patch.edit.rank > 0 and (patch.gate is not None) == (mode == "gated")
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    procs = dict(pipe.unet.attn_processors)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10])
    cond = pipe.encode_prompt("a red star", "cpu", 1, False)[0]
    with torch.no_grad():
        base = pipe.unet(x, t, cond).sample
        with patch.apply(pipe, mode=mode):
            edited = pipe.unet(x, t, cond).sample
        after = pipe.unet(x, t, cond).sample
    assert not torch.allclose(base, edited)
    assert torch.equal(base, after)
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in weights.items())
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == {k: type(v) for k, v in procs.items()}


def test_gate_opens_for_concept_and_stays_shut_for_others(pipe):
    from editflow.edits.conditioning import encode

    req = EraseRequest([ConceptSpec("star")], preserve=["circle", "heart", "square", "moon", "cross"])
    patch = get_method("ace").compute(pipe, req, ACEConfig())
    star, circle = encode(pipe, ["a star", "a circle"])
    assert patch.gate(star[2]).item() > 0.5  # the concept token ("star" is position 2 after <bos> "a")
    assert patch.gate(circle[2]).item() < 0.5
    assert (patch.gate(star[:2]) < 0.5).all()  # context before the concept stays untouched


def test_patch_round_trip_and_wrong_base(pipe, tmp_path, world):
    req = EraseRequest([ConceptSpec("star")], preserve=["circle"])
    patch = get_method("ace").compute(pipe, req, ACEConfig())
    path = patch.save(tmp_path / "p.safetensors")
    again = Patch.load(path)
    assert again.metadata == patch.metadata
    assert torch.equal(again.edit.down, patch.edit.down) and again.gate.tau == patch.gate.tau
    other = tiny_sd_pipeline(tmp_path / "other", world, seed=1)
    with pytest.raises(EditflowError, match="was made for base"):
        again.apply(other)
    with pytest.raises(EditflowError, match="not an editflow patch|not a safetensors"):
        (tmp_path / "junk.safetensors").write_bytes(b"0123456789")
        Patch.load(tmp_path / "junk.safetensors")


def test_unknown_method_lists_valid():
    assert available() == ["ace", "esd-u", "esd-x", "uce"]
    with pytest.raises(ValueError, match="valid: ace, esd-u, esd-x, uce"):
        get_method("esd")


def test_request_validation():
    with pytest.raises(ValueError, match="both erased and preserved"):
        EraseRequest([ConceptSpec("star")], preserve=["star"])
    with pytest.raises(ValueError, match="exactly one"):
        EraseRequest([ConceptSpec("star")], templates=("a photo",))


def test_methods_declare_their_kind_and_a_method_without_one_is_refused():
    from editflow.edits.registry import CLOSED_FORM, GRADIENT, available, get_method, register

    assert {m: get_method(m).kind for m in available()} == {"ace": CLOSED_FORM, "uce": CLOSED_FORM,
                                                            "esd-x": GRADIENT, "esd-u": GRADIENT}

    class Kindless:
        name, config_class = "kindless", dict

    with pytest.raises(ValueError, match="kind must be"):
        register(Kindless())
    assert "kindless" not in available()
