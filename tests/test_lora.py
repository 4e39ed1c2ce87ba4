"""peft LoRA adapters for gradient-trained patches: off by default, held directions stay put, the UNet
comes back as it was."""

import pytest
import torch

from editflow.edits.lora import peft_lora
from editflow.edits.targets import TargetSpec
from editflow.errors import EditflowError
from tests.tiny import tiny_sd_pipeline


def _out(pipe, x, t, c):
    return pipe.unet(x, t, encoder_hidden_states=c).sample


def test_adapter_trains_only_free_directions_and_leaves_unet_as_it_was(tmp_path, world):
    pipe = tiny_sd_pipeline(tmp_path, world)
    unet = pipe.unet
    modules = TargetSpec().find(unet)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    types = {n: type(m) for n, m in unet.named_modules()}
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    up = {n: torch.cat([torch.randn(m.out_features, 2, generator=gen), torch.zeros(m.out_features, 3)], 1)
          for n, m in modules.items()}
    down = {n: torch.randn(5, m.in_features, generator=gen) for n, m in modules.items()}
    x, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 500])
    c = torch.randn(2, 7, unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        base = _out(pipe, x, t, c)
    with peft_lora(unet, up, down, fixed={n: 2 for n in modules}) as lora:
        with torch.no_grad():
            assert torch.equal(_out(pipe, x, t, c), base)  # off outside `active`
            with lora.active():
                on = _out(pipe, x, t, c)
            # the same edit as forward hooks computing W x + b + up (down x) on the base layers
            hooks = [m.get_base_layer().register_forward_hook(
                lambda mod, a, o, n=n: o + (a[0] @ down[n].T) @ up[n].T) for n, m in
                ((n, unet.get_submodule(n)) for n in modules)]
            expected = _out(pipe, x, t, c)
            for h in hooks:
                h.remove()
        assert not torch.equal(on, base) and torch.allclose(on, expected, atol=1e-6)
        opt = torch.optim.Adam(lora.parameters(), lr=0.1)
        for _ in range(3):
            with lora.active():
                loss = _out(pipe, x, t, c).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        edit = lora.edit()
    for n in modules:
        assert torch.equal(edit.up[n][:, :2], up[n][:, :2]) and torch.equal(edit.down[n][:2], down[n][:2])
        assert not torch.equal(edit.up[n][:, 2:], up[n][:, 2:])  # the free directions trained
    assert {n: type(m) for n, m in unet.named_modules()} == types
    assert {n: p.requires_grad for n, p in unet.named_parameters()} == flags
    after = unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in after.items())


def test_refuses_a_unet_that_already_carries_adapters(tmp_path, world):
    from peft import LoraConfig

    pipe = tiny_sd_pipeline(tmp_path, world)
    modules = TargetSpec().find(pipe.unet)
    pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["to_k"]), adapter_name="user")
    with pytest.raises(EditflowError, match="already carries LoRA"):
        with peft_lora(pipe.unet, {n: torch.zeros(4, 1) for n in modules}, {n: torch.zeros(1, 4) for n in modules}):
            pass
