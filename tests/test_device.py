"""--device / --dtype parsing: auto picks what the machine has, a missing device is one clear error."""

import pytest
import torch

from editflow.errors import EditflowError
from editflow.models.device import Placement, resolve_device, resolve_dtype


def test_auto_follows_the_machine(monkeypatch):
    monkeypatch.delenv("EDITFLOW_DEVICE", raising=False)
    monkeypatch.delenv("EDITFLOW_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Placement.resolve() == Placement(torch.device("cpu"), torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16


@pytest.mark.parametrize("spec, want", [("cpu", "cpu"), ("CPU", "cpu"), (" cpu ", "cpu")])
def test_explicit_cpu(spec, want):
    assert resolve_device(spec) == torch.device(want)


@pytest.mark.parametrize("spec, dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                         ("float16", torch.float16), ("auto", torch.float32)])
def test_dtypes(spec, dtype):
    assert resolve_dtype(spec, torch.device("cpu")) == dtype


def test_environment_variables_are_the_defaults(monkeypatch):
    monkeypatch.setenv("EDITFLOW_DEVICE", "cpu")
    monkeypatch.setenv("EDITFLOW_DTYPE", "bfloat16")
    assert Placement.resolve() == Placement(torch.device("cpu"), torch.bfloat16)
    assert Placement.resolve(dtype="float32").dtype == torch.float32  # an explicit value wins


@pytest.mark.parametrize("spec, match", [("cuda", "no usable CUDA"), ("cuda:3", "no usable CUDA"),
                                         ("gpu", "unknown device"), ("tpu", "unknown device|unsupported device")])
def test_missing_or_unknown_device_is_one_line(monkeypatch, spec, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EditflowError, match=match) as exc:
        resolve_device(spec)
    assert "\n" not in str(exc.value)


def test_unknown_dtype_lists_the_valid_ones():
    with pytest.raises(EditflowError, match="valid: auto, float32, float16, bfloat16"):
        resolve_dtype("half", torch.device("cpu"))


def test_solves_stay_where_float64_exists():
    assert Placement(torch.device("mps"), torch.float16).solve_device == torch.device("cpu")
    assert Placement(torch.device("cpu"), torch.bfloat16).solve_device == torch.device("cpu")
