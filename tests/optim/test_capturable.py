"""capturable=True: tensor LRs enter the group table through device ops, so step() can be
captured in a CUDA graph and replayed. On CPU the same code path runs without the graph."""

from __future__ import annotations

import pytest
import torch
from devices import kernel_devices
from tolerances import assert_close
from torch import nn

import fused_mup
from fused_mup.launcher import KernelConfig

SMALL_TILES = KernelConfig(block=32, chunk_size=64)


def make(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 20), nn.Tanh(), nn.Linear(20, 3)).to(device)


def groups(model, lr, mode):
    return [
        {
            "params": [model[0].weight, model[2].weight],
            "lr": lr,
            "lr_mult": 0.5,
            "weight_decay": 0.1,
            "weight_decay_mode": mode,
        },
        {
            "params": [model[0].bias, model[2].bias],
            "lr": lr.clone() if torch.is_tensor(lr) else lr,
            "weight_decay": 0.0,
        },
    ]


def torch_groups(model, mode):
    # independent decay (lr / initial_lr) * wd is torch's coupled decay with wd / initial_lr.
    wd = 0.1 if mode == "coupled" else 0.1 / (1e-2 * 0.5)
    return [
        {"params": [model[0].weight, model[2].weight], "lr": 5e-3, "weight_decay": wd},
        {"params": [model[0].bias, model[2].bias], "lr": 1e-2, "weight_decay": 0.0},
    ]


@pytest.mark.parametrize("mode", ["coupled", "independent"])
@pytest.mark.parametrize("device", kernel_devices())
def test_tensor_lr_with_scheduler_matches_torch(device, mode):
    m_ours, m_ref = make(device), make(device)
    lr = torch.tensor(1e-2, device=device)
    opt = fused_mup.AdamW(
        groups(m_ours, lr, mode), capturable=True, backend="triton", kernel_config=SMALL_TILES
    )
    ref = torch.optim.AdamW(torch_groups(m_ref, mode))
    shape = lambda s: 0.5 ** (s // 2)  # noqa: E731
    s_ours = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    s_ref = torch.optim.lr_scheduler.LambdaLR(ref, shape)
    gen = torch.Generator().manual_seed(3)
    for _ in range(7):
        x = torch.randn(5, 6, generator=gen).to(device)
        for m, o, s in ((m_ours, opt, s_ours), (m_ref, ref, s_ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
            s.step()
    assert torch.is_tensor(opt.param_groups[0]["lr"]), "the scheduler must keep the tensor lr"
    for (name, a), b in zip(m_ours.named_parameters(), m_ref.parameters()):
        assert_close(a, b, torch.float32, f"{name}, capturable with tensor lr")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; CPU version runs the path")
def test_step_replays_in_a_cuda_graph():
    m_ours, m_ref = make("cuda"), make("cuda")
    lr = torch.tensor(1e-2, device="cuda")
    opt = fused_mup.AdamW(groups(m_ours, lr, "coupled"), capturable=True)
    ref = torch.optim.AdamW(torch_groups(m_ref, "coupled"))
    static_x = torch.zeros(5, 6, device="cuda")

    def step():
        opt.zero_grad(set_to_none=False)
        m_ours(static_x).square().mean().backward()
        opt.step()

    gen = torch.Generator(device="cuda").manual_seed(3)
    xs = [torch.randn(5, 6, device="cuda", generator=gen) for _ in range(8)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: state, tables, compile
        for x in xs[:3]:
            static_x.copy_(x)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for x in xs[3:]:
        static_x.copy_(x)
        graph.replay()
    for x in xs:
        ref.zero_grad()
        m_ref(x).square().mean().backward()
        ref.step()
    torch.cuda.synchronize()
    for (name, a), b in zip(m_ours.named_parameters(), m_ref.parameters()):
        assert_close(a, b, torch.float32, f"{name} after graph replays")


@pytest.mark.parametrize("mode", ["coupled", "independent"])
def test_tensor_lr_on_the_reference_path_is_never_read_on_the_host(mode, monkeypatch):
    """capturable=True with a tensor lr where params fall off the kernel (float64 under
    "auto", or backend="reference"): torch supports it, reading lr on the device. On CUDA a host
    read raised ("would synchronize"); here any host read of a tensor fails the step."""
    m_ours, m_ref = make("cpu"), make("cpu")
    m_ours.double()
    m_ref.double()
    lr = torch.tensor(1e-2, dtype=torch.float64)
    opt = fused_mup.AdamW(groups(m_ours, lr, mode), capturable=True, backend="reference")
    ref = torch.optim.AdamW(torch_groups(m_ref, mode))
    shape = lambda s: 0.5 ** (s // 2)  # noqa: E731
    s_ours = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    s_ref = torch.optim.lr_scheduler.LambdaLR(ref, shape)
    x = torch.randn(8, 6, dtype=torch.float64)

    def host_read(self, *args):
        raise AssertionError("step() read a tensor on the host")

    for step in range(5):
        for m, o in ((m_ours, opt), (m_ref, ref)):
            o.zero_grad()
            m(x).square().mean().backward()
        if step:  # the first (eager warm-up) step may create the device peak from floats
            monkeypatch.setattr(torch.Tensor, "__float__", host_read)
            monkeypatch.setattr(torch.Tensor, "item", host_read)
            monkeypatch.setattr(torch.Tensor, "__bool__", host_read)
        opt.step()
        monkeypatch.undo()
        ref.step()
        s_ours.step()
        s_ref.step()
    for (name, a), b in zip(m_ours.named_parameters(), m_ref.parameters()):
        assert_close(a.detach(), b.detach(), torch.float64, what=f"{mode}: {name}")
