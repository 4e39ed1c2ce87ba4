"""The CLI: --help everywhere, results on stdout, one-line errors with the right exit codes."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from editflow.cli import app

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["generate"], ["info"], ["erase"], ["apply"], ["export"], ["world"],
                                 ["world", "train"], ["world", "check"], ["world", "render"]])
def test_help_everywhere(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


@pytest.mark.parametrize("cmd", [["--help"], ["erase", "--help"], ["eval", "--help"], ["world", "check", "--help"]])
def test_help_imports_no_model_library(cmd):
    """--help answers at once: no torch, diffusers or transformers is imported to print it (the
    libraries' loading bars are silenced where a command first runs a model instead)."""
    import subprocess
    import sys

    code = ("import sys; from editflow.cli import main; sys.argv = ['editflow', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    assert "Usage" in res.stdout and res.stdout.strip().splitlines()[-1] == "[]", res.stdout[-300:]


def test_generate_writes_a_grid(tmp_path):
    out = tmp_path / "g.png"
    res = runner.invoke(app, ["generate", "--prompt", "a red star", "--n", "4", "--steps", "3",
                              "--cols", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert Image.open(out).size == (64, 64)


def test_info_json_lists_cross_attention():
    res = runner.invoke(app, ["info", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["pipeline"] == "StableDiffusionPipeline" and d["cross_attention_layers"] > 0


def test_world_render(tmp_path):
    res = runner.invoke(app, ["world", "render", "--n", "4", "--out", str(tmp_path / "w.png")])
    assert res.exit_code == 0
    assert len(res.stdout.strip().splitlines()) == 4


@pytest.mark.parametrize("args, code, message", [
    (["generate", "--prompt", "a star", "--model", "/no/such/model", "--out", "x.png"], 1, "model not found"),
    (["generate", "--prompt", "  ", "--out", "x.png"], 1, "empty prompt"),
    (["generate", "--prompt", "a star", "--n", "-3", "--out", "x.png"], 2, "equal to 1"),
    (["world", "train", "--config", "/no/recipe.yaml"], 1, "recipe not found"),
])
def test_bad_input_is_one_line_error(args, code, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args, env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert res.exit_code == code, res.output
    assert message in res.output
    if code == 1:
        assert len(res.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x.png").exists()
