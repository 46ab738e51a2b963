"""The launcher's tables: int64 element offsets, and one program per empty tensor."""

from __future__ import annotations

import pytest
import torch
from devices import kernel_devices
from fused_mup.kernels.tables import ChunkCol, TensorCol
from tolerances import assert_close

from fused_mup import launcher
from fused_mup.launcher import BucketKey, KernelConfig, TensorSlot
from fused_mup.reference import adamw_step_

GROUP = [1e-2, 1e-2 * 0.1, 0.9, 0.999, 1e-8]  # lr, decay, beta1, beta2, eps


def _slot(n, device, dtype=torch.float32):
    p = torch.randn(n, device=device).to(dtype)
    return TensorSlot(
        param=p,
        exp_avg=torch.zeros_like(p),
        exp_avg_sq=torch.zeros_like(p),
        max_exp_avg_sq=None,
        step=torch.zeros((), device=device),
        group_index=0,
    )


def _launch(bucket, device, config):
    groups = launcher.upload_group_table([GROUP], torch.device(device))
    one = torch.ones(1, device=device)
    zero = torch.zeros(1, device=device)
    launcher.launch(bucket, groups, one, zero, config)


def _reference(slot, grad):
    p, m, v = slot.param.clone(), slot.exp_avg.clone(), slot.exp_avg_sq.clone()
    step = slot.step.clone()
    lr, decay, b1, b2, eps = GROUP
    adamw_step_(
        p, grad, m, v, None, step, lr=lr, decay=decay, beta1=b1, beta2=b2, eps=eps, maximize=False
    )
    return p


@pytest.mark.parametrize("device", kernel_devices())
def test_element_offsets_past_2_to_the_31_are_int64(device):
    """A tensor's elements past 2**31, without allocating 8 GiB: the table points each tensor
    2**31 elements *before* its storage and its chunk starts at element 2**31. int32 offsets
    would wrap negative and address memory 8 GiB away."""
    offset = 2**31 + 64  # keeps chunk starts at multiples of BLOCK and addresses aligned
    config = KernelConfig(block=32, chunk_size=128)
    slot = _slot(100, device)
    grad = torch.randn(100, device=device)
    expected = _reference(slot, grad)
    key = BucketKey(torch.device(device), torch.float32, torch.float32, False, False)
    bucket = launcher.build_bucket(key, [slot], [grad.data_ptr()], config)
    shift = offset * 4  # bytes
    table = bucket.tensor_table_host.clone()
    for col in (TensorCol.PARAM, TensorCol.GRAD, TensorCol.EXP_AVG, TensorCol.EXP_AVG_SQ):
        table[0, col] -= shift
    bucket.tensor_table = table.to(device)
    chunks = bucket.chunk_table.cpu().clone()
    chunks[0, ChunkCol.START] = offset
    chunks[0, ChunkCol.END] = offset + 100  # the tensor's end as seen from the shifted base
    bucket.chunk_table = chunks[:1].to(device)
    bucket.n_programs = 1
    _launch(bucket, device, config)
    assert_close(slot.param, expected, torch.float32, "param updated through int64 offsets")
    assert slot.step.item() == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (16 GiB); CPU version above")
def test_real_tensor_past_2_to_the_31_elements():
    n = 2**31 + 1000
    slot = _slot(n, "cuda", torch.float16)
    grad = torch.randn(n, device="cuda", dtype=torch.float16)
    tail = slice(n - 2000, n)
    tail_slot = TensorSlot(
        param=slot.param[tail].clone(),
        exp_avg=torch.zeros(2000, device="cuda", dtype=torch.float16),
        exp_avg_sq=torch.zeros(2000, device="cuda", dtype=torch.float16),
        max_exp_avg_sq=None,
        step=torch.zeros((), device="cuda"),
        group_index=0,
    )
    expected = _reference(tail_slot, grad[tail])
    config = KernelConfig()
    key = BucketKey(torch.device("cuda"), torch.float16, torch.float16, False, False)
    bucket = launcher.build_bucket(key, [slot], [grad.data_ptr()], config)
    _launch(bucket, "cuda", config)
    assert_close(slot.param[tail], expected, torch.float16, "tail past 2**31")


@pytest.mark.parametrize("device", kernel_devices())
def test_empty_tensors_get_one_program_and_count_their_step(device):
    config = KernelConfig(block=32, chunk_size=64)
    slots = [_slot(0, device), _slot(65, device), _slot(0, device)]
    grads = [torch.randn(s.param.shape, device=device) for s in slots]
    key = BucketKey(torch.device(device), torch.float32, torch.float32, False, False)
    bucket = launcher.build_bucket(key, slots, [g.data_ptr() for g in grads], config)
    assert bucket.n_programs == 1 + 2 + 1
    for _ in range(3):
        _launch(bucket, device, config)
    assert [s.step.item() for s in slots] == [3, 3, 3]
    assert bucket.done_count.tolist() == [0, 0, 0], "scratch counters must reset"


def _carved(sizes, offset_elems, device, dtype=torch.float32):
    """Views of one buffer, the i-th starting ``offset_elems[i]`` elements past a 16-byte
    boundary: offset 0 is aligned, any other (for fp32) is not."""
    per_16 = 16 // dtype.itemsize
    buffer = torch.zeros(sum(sizes) + 2 * per_16 * len(sizes), device=device, dtype=dtype)
    assert buffer.data_ptr() % 16 == 0
    views, at = [], 0
    for n, off in zip(sizes, offset_elems):
        views.append(buffer[at + off : at + off + n])
        at = -(-(at + off + n) // per_16) * per_16  # the next 16-byte boundary
    return views


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("device", kernel_devices())
def test_mixed_alignment_launch_matches_the_reference(device, amsgrad, monkeypatch):
    """One launch mixing aligned tensors, a param at an odd offset and a 1-element grad at the
    head of a bucket-view-like buffer: every tensor matches the reference path, and the aligned
    tensors took the vector-access loop (alignment is per tensor, not per launch)."""
    from fused_mup.kernels import adamw as adamw_module

    taken = []
    real = adamw_module._update_range

    def spy(*args):
        taken.append(bool(args[-2]))  # ALIGNED
        return real(*args)

    monkeypatch.setattr(adamw_module, "_update_range", spy)
    config = KernelConfig(block=32, chunk_size=64)
    sizes = [1, 100, 70, 33]
    params = _carved(sizes, [0, 0, 1, 0], device)  # tensor 2: a param at a 4-byte offset
    grads = _carved(sizes, [0, 1, 0, 0], device)  # grad 1 follows a 1-element grad: offset 4 B
    slots = []
    for p, g in zip(params, grads):
        p.copy_(torch.randn(p.shape))
        g.copy_(torch.randn(g.shape))
        slot = _slot(p.numel(), device)
        slot.param = p
        slot.exp_avg.copy_(torch.randn(p.shape) * 0.1)
        slot.exp_avg_sq.copy_(torch.rand(p.shape) * 0.1)
        if amsgrad:
            slot.max_exp_avg_sq = slot.exp_avg_sq * 1.5
        slots.append(slot)
    expected = []
    for slot, g in zip(slots, grads):
        t = [x.clone() if x is not None else None for x in (slot.param, slot.exp_avg,
             slot.exp_avg_sq, slot.max_exp_avg_sq, slot.step)]  # fmt: skip
        lr, decay, b1, b2, eps = GROUP
        for _ in range(2):
            adamw_step_(t[0], g, t[1], t[2], t[3], t[4], lr=lr, decay=decay, beta1=b1,
                        beta2=b2, eps=eps, maximize=False)  # fmt: skip
        expected.append(t)
    key = BucketKey(torch.device(device), torch.float32, torch.float32, amsgrad, False)
    bucket = launcher.build_bucket(key, slots, [g.data_ptr() for g in grads], config)
    for _ in range(2):
        _launch(bucket, device, config)
    for i, (slot, t) in enumerate(zip(slots, expected)):
        assert_close(slot.param, t[0], torch.float32, f"tensor {i} param")
        assert_close(slot.exp_avg, t[1], torch.float32, f"tensor {i} exp_avg")
        assert_close(slot.exp_avg_sq, t[2], torch.float32, f"tensor {i} exp_avg_sq")
        if amsgrad:
            assert_close(slot.max_exp_avg_sq, t[3], torch.float32, f"tensor {i} max")
        assert slot.step.item() == 2
    # Per step, per program: sizes 1, 100, 70, 33 -> 1, 2, 2, 1 programs; tensors 1 and 2 are
    # misaligned (grad, param), tensors 0 and 3 aligned.
    assert taken == [True, False, False, False, False, True] * 2, taken


@pytest.mark.parametrize("device", kernel_devices())
def test_grad_norm_two_level_reduction_is_exact_and_repeatable(device):
    """More programs than one run of BLOCK (here 32 programs a run, 34 programs): the per-run
    sums and their total match float64, bit for bit on repeat, scratch counters reset, and a
    second bucket adds to the first (accumulate)."""
    config = KernelConfig(block=32, chunk_size=32)
    sizes = [32 * 16 + 5, 1, 32 * 15, 0]  # 17 + 1 + 15 + 1 programs
    slots = [_slot(n, device) for n in sizes]
    grads = [torch.randn(n, device=device) * 3 for n in sizes]
    key = BucketKey(torch.device(device), torch.float32, torch.float32, False, False)
    bucket = launcher.build_bucket(key, slots, [g.data_ptr() for g in grads], config)
    assert bucket.n_programs == 34 and bucket.norm_done_count.numel() == 1 + 2
    scale = torch.full((1,), 2.0, device=device)
    want = sum((g.double() / 2).square().sum() for g in grads)
    results = []
    for _ in range(2):
        clip = torch.full((3,), float("nan"), device=device)  # poisoned
        launcher.launch_grad_norm(bucket, scale, clip, 1.5, False, config)
        results.append(clip.clone())
        assert bucket.norm_done_count.tolist() == [0, 0, 0], "scratch counters must reset"
    assert abs(results[0][0].item() - want.item()) <= 1e-6 * want.item()
    assert results[0][1].item() == 1.5 and results[0][2].item() == 0.0
    assert all(torch.equal(r, results[0]) for r in results), "not bit-for-bit repeatable"
    # A second bucket adds to the first's sum; a non-finite grad sets the flag.
    other = launcher.build_bucket(key, slots[1:2], [grads[1].data_ptr()], config)
    launcher.launch_grad_norm(other, scale, clip, 1.5, True, config)
    assert clip[0].item() == pytest.approx(want.item() + (grads[1].double() / 2).square().item())
    grads[1].fill_(float("inf"))
    launcher.launch_grad_norm(bucket, scale, clip, 1.5, False, config)
    assert clip[0].item() == float("inf") and clip[2].item() == 1.0
