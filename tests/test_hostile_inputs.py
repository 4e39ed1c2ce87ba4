"""Hostile inputs (issue 24's appendix): each ends as ONE stderr line ``error: ...`` with a non-zero
exit (1 at run time, 2 for usage), and nothing is created or changed: no output, no stray ``*.tmp``,
no cache, no store. Patch files are damaged copies of one real ACE patch on the embedded model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from editflow.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
HUGE = str(10**20)


def _read(path):
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A real gated patch, and damaged or foreign variants of it."""
    d = tmp_path_factory.mktemp("hostile")
    good = d / "good.safetensors"
    res = runner.invoke(app, ["erase", "--concept", "star", "--patch-only", "--no-check", "--out", str(good),
                              "--cache-dir", str(d / "cache")])
    assert res.exit_code == 0, res.output
    t, meta = _read(good)
    up = sorted(k for k in t if k.startswith("up."))

    def write(name, tensors, metadata=meta):
        save_file({k: v.contiguous() for k, v in tensors.items()}, d / f"{name}.safetensors", metadata=metadata)

    def poisoned(key, value=float("nan")):
        out = dict(t)
        out[key] = out[key].clone()
        out[key].view(-1)[0] = value
        return out

    write("nan", poisoned(up[0]))
    write("inf-down", poisoned("down", float("inf")))
    write("nan-gate", poisoned("gate.basis"))
    write("nan-tau", t, {**meta, "gate": json.dumps({"tau": float("nan"), "temperature": 1.0})})
    write("nan-token", {**t, "token.<mine>": torch.full((1, t["down"].shape[1]), float("nan"))})
    layered = {k: v for k, v in t.items() if k not in ("down", "gate.basis")}  # ESD-style: a down per layer
    layered.update({"down." + k[3:]: t["down"].clone() for k in up})
    no_gate = {k: v for k, v in meta.items() if k != "gate"}
    write("layered", layered, no_gate)
    write("nan-layered", {**layered, "down." + up[0][3:]: torch.full_like(t["down"], float("nan"))}, no_gate)
    write("no-metadata", t, {"format": meta["format"]})
    write("bad-json", t, {**meta, "metadata": "{not json"})
    write("gate-renamed", {**{k: v for k, v in t.items() if k != "gate.basis"}, "gate.wrong": t["gate.basis"]})
    write("stray-names", {**{k: v for k, v in t.items() if k != "down"}, "weights": t["down"]})
    write("short-rows", {k: (v[:-1] if k.startswith("up.") else v) for k, v in t.items()})  # fits no layer
    write("bad-rank", {**t, up[0]: t[up[0]][:, :-1]})
    (d / "planted").mkdir()
    (d / "bad-gates.yaml").write_text("default: {erasure_rate: {maximum: 0.1}}\n")
    return d


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


P = "{bad}/{name}.safetensors"
APPLY = ["apply", "--prompt", "a star", "--n", "1", "--out", "g.png", "--patch"]
CASES = {
    # non-finite patches: refused at load, in every mode, and so also by export
    "nan-gated": (APPLY + [P.format(bad="{bad}", name="nan")], 1, "NaN or Inf"),
    "nan-merge": (APPLY + [P.format(bad="{bad}", name="nan"), "--mode", "merge"], 1, "NaN or Inf"),
    "inf-down": (APPLY + [P.format(bad="{bad}", name="inf-down")], 1, "NaN or Inf"),
    "nan-gate": (APPLY + [P.format(bad="{bad}", name="nan-gate")], 1, "NaN or Inf"),
    "nan-tau": (APPLY + [P.format(bad="{bad}", name="nan-tau")], 1, "must be finite"),
    "nan-token": (APPLY + [P.format(bad="{bad}", name="nan-token")], 1, "NaN or Inf"),
    "nan-layered": (APPLY + [P.format(bad="{bad}", name="nan-layered")], 1, "NaN or Inf"),
    "nan-export": (["export", "--patch", P.format(bad="{bad}", name="nan"), "--format", "kohya", "--out",
                    "k.safetensors"], 1, "NaN or Inf"),
    "nan-export-lora": (["export", "--patch", P.format(bad="{bad}", name="nan"), "--out", "lora"], 1, "NaN or Inf"),
    # malformed patch files: schema at load, shapes against the model at apply
    "no-metadata": (APPLY + [P.format(bad="{bad}", name="no-metadata")], 1, "no 'metadata'"),
    "bad-json": (APPLY + [P.format(bad="{bad}", name="bad-json")], 1, "not valid JSON"),
    "gate-renamed": (APPLY + [P.format(bad="{bad}", name="gate-renamed")], 1, "gate.basis"),
    "stray-names": (APPLY + [P.format(bad="{bad}", name="stray-names")], 1, "unexpected tensors"),
    "short-rows": (APPLY + [P.format(bad="{bad}", name="short-rows")], 1, "this model's weight is"),
    "bad-rank": (APPLY + [P.format(bad="{bad}", name="bad-rank")], 1, "want (out, r) and (r, in)"),
    "layered-gated": (APPLY + [P.format(bad="{bad}", name="layered"), "--mode", "gated"], 1, "no gate"),
    # output paths, checked before any work
    "erase-out-dir": (["erase", "--concept", "star", "--patch-only", "--out", "adir"], 1, "is a folder"),
    "erase-out-under-file": (["erase", "--concept", "star", "--patch-only", "--out", "afile/p.safetensors"], 1,
                             "afile is not a folder"),
    "erase-flow-report-is-file": (["erase", "--concept", "star", "--out", "afile.safetensors"], 1,
                                  "exists and is not a folder"),
    "kohya-out-dir": (["export", "--patch", "{bad}/good.safetensors", "--format", "kohya", "--out", "adir"], 1,
                      "is a folder"),
    "kohya-out-proc": (["export", "--patch", "{bad}/good.safetensors", "--format", "kohya", "--out",
                        "/proc/editflow-k.safetensors"], 1, "cannot write in /proc"),
    "lora-out-file": (["export", "--patch", "{bad}/good.safetensors", "--out", "afile"], 1,
                      "exists and is not a folder"),
    "generate-out-under-file": (["generate", "--prompt", "a star", "--out", "afile/g.png"], 1, "not a folder"),
    "generate-out-proc": (["generate", "--prompt", "a star", "--out", "/proc/editflow-g.png"], 1, "cannot write in"),
    "generate-out-no-suffix": (["generate", "--prompt", "a star", "--out", "grid"], 1, "image file name"),
    "render-out-dir": (["world", "render", "--out", "adir"], 1, "is a folder"),
    "apply-out-dir": (APPLY[:-3] + ["--out", "adir", "--patch", "{bad}/good.safetensors"], 1, "is a folder"),
    "invert-out-dir": (["invert", "--token", "<x>", "--prompt", "a star", "--out", "adir"], 1, "is a folder"),
    "invert-preview-under-file": (["invert", "--token", "<x>", "--prompt", "a star", "--out", "t.safetensors",
                                   "--preview", "afile/p.png"], 1, "not a folder"),
    "eval-out-file": (["eval", "--concept", "star", "--out", "afile"], 1, "exists and is not a folder"),
    "train-out-file": (["world", "train", "--config", str(REPO / "configs/world/embedded.yaml"), "--out", "afile"],
                       1, "exists and is not a folder"),
    # sizes
    "generate-n": (["generate", "--prompt", "a star", "--n", HUGE, "--out", "g.png"], 2, "Invalid value for '--n'"),
    "generate-steps": (["generate", "--prompt", "a star", "--steps", str(10**13), "--out", "g.png"], 2,
                       "Invalid value for '--steps'"),
    "generate-scale": (["generate", "--prompt", "a star", "--scale", HUGE, "--out", "g.png"], 2, "'--scale'"),
    "generate-guidance-nan": (["generate", "--prompt", "a star", "--guidance", "inf", "--out", "g.png"], 2,
                              "not a finite number"),
    "esd-steps": (["erase", "--concept", "star", "--method", "esd-x", "--steps", str(10**30), "--patch-only",
                   "--out", "e.safetensors"], 2, "Invalid value for '--steps'"),
    "render-n": (["world", "render", "--n", HUGE, "--out", "w.png"], 2, "Invalid value for '--n'"),
    "eval-images": (["eval", "--concept", "star", "--images", HUGE], 2, "Invalid value for '--images'"),
    "invert-steps": (["invert", "--token", "<x>", "--prompt", "a star", "--steps", HUGE, "--out", "t.safetensors"],
                     2, "Invalid value for '--steps'"),
    # text
    "prompt-not-utf8": (["generate", "--prompt", os.fsdecode(b"a \xff star"), "--out", "g.png"], 2,
                        "not valid UTF-8"),
    "concept-not-utf8": (["erase", "--concept", os.fsdecode(b"st\xffr"), "--patch-only", "--out", "p.safetensors"],
                         2, "not valid UTF-8"),
    # silently accepted before
    "empty-token": (["invert", "--token", "", "--prompt", "a star", "--out", "t.safetensors"], 1, "needs a name"),
    "blank-token": (["invert", "--token", "  ", "--prompt", "a star", "--out", "t.safetensors"], 1, "needs a name"),
    "spaced-token": (["invert", "--token", "<my star>", "--prompt", "a star", "--out", "t.safetensors"], 1,
                     "one word"),
    "unknown-family": (["eval", "--concept", "star", "--family", "bogus"], 1, "valid: object, colour, style"),
    "duplicate-concept": (["erase", "--concept", "star", "--concept", "star", "--patch-only", "--out",
                           "p.safetensors"], 1, "named twice"),
    "duplicate-concept-case": (["erase", "--concept", "star", "--concept", "STAR", "--patch-only", "--out",
                                "p.safetensors"], 1, "named twice"),
    # inputs of later stages are read before the first one runs
    "erase-bad-gates": (["erase", "--concept", "star", "--gates", "{bad}/bad-gates.yaml", "--out", "p.safetensors"],
                        1, "bad-gates.yaml"),
    "erase-bad-register-name": (["erase", "--concept", "star", "--register", "../../x", "--out", "p.safetensors"],
                                1, "registered model name"),
    "apply-mode": (APPLY + ["{bad}/good.safetensors", "--mode", "sideways"], 2, "Invalid value for '--mode'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_and_changes_nothing(case, bad, tmp_path, monkeypatch):
    args, code, message = CASES[case]
    args = [a.replace("{bad}", str(bad)) for a in args]
    if args[0] == "erase":
        args += ["--cache-dir", str(tmp_path / "cache")]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("a file, not a folder\n")
    (tmp_path / "afile-eval").write_text("where the flow would write its report\n")
    before, bad_before = _tree(tmp_path), _tree(bad)
    res = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in res.output
    assert _tree(tmp_path) == before  # nothing written: no output, no *.tmp, no cache
    assert _tree(bad) == bad_before


def test_the_damaged_patches_source_and_its_layered_copy_still_fit(bad, embedded_pipe):
    from editflow.edits import Patch

    layered = Patch.load(bad / "layered.safetensors")
    assert not layered.edit.shared and layered.gate is None
    assert set(layered.check(embedded_pipe.unet, "merge")) >= set(layered.edit.up)
    good = Patch.load(bad / "good.safetensors")
    assert good.gate is not None and set(good.check(embedded_pipe.unet)) >= set(good.edit.up)


def test_tensorfile_write_onto_a_folder_leaves_no_tmp(tmp_path):
    from editflow import tensorfile
    from editflow.errors import EditflowError

    (tmp_path / "p.safetensors").mkdir()
    with pytest.raises(EditflowError, match="is a folder"):
        tensorfile.write(tmp_path / "p.safetensors", {"x": torch.zeros(2)})
    (tmp_path / "f").write_text("")
    with pytest.raises(EditflowError, match="cannot write"):
        tensorfile.write(tmp_path / "f" / "p.safetensors", {"x": torch.zeros(2)})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f", "p.safetensors"]


def test_library_checks_behind_the_cli():
    from editflow.edits.request import ConceptSpec, EraseRequest
    from editflow.errors import EditflowError
    from editflow.models.tokens import LearnedTokens

    with pytest.raises(ValueError, match="more than once"):
        EraseRequest([ConceptSpec("star"), ConceptSpec("Star ")])
    with pytest.raises(EditflowError, match="needs a name"):
        LearnedTokens(" ", torch.zeros(1, 4))
    with pytest.raises(ValueError, match="UTF-8"):
        ConceptSpec(os.fsdecode(b"\xff"))


def test_a_planted_pickle_checkpoint_is_refused_not_run(tmp_path, monkeypatch):
    """`world train` loads its work-dir checkpoints weights-only: a file that would run code when
    unpickled is refused with one line, before any stage runs, and its code never runs."""
    import builtins

    marker = tmp_path / "PWNED"

    class Planted:
        def __reduce__(self):
            return builtins.open, (str(marker), "w")

    work = tmp_path / "work"
    work.mkdir()
    torch.save({"step": 1, "states": {}, "payload": Planted()}, work / "text_encoder.ckpt")
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    res = runner.invoke(app, ["world", "train", "--config", str(REPO / "configs/world/embedded.yaml"),
                              "--work-dir", str(work), "--out", str(tmp_path / "model"), "--until", "text_encoder"])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a checkpoint editflow wrote" in lines[0] and "nothing in it was run" in lines[0]
    assert not marker.exists()
    assert _tree(tmp_path) == before  # no tokenizer stage, no model folder


def test_world_train_writes_to_the_working_directory_by_default():
    import inspect

    from editflow.cli.world import world_train
    from editflow.models.pipeline import embedded_dir

    default = inspect.signature(world_train).parameters["out"].default
    assert default == Path("embedded-model") and not default.is_absolute()
    assert embedded_dir().resolve() not in (Path.cwd() / default).resolve().parents
