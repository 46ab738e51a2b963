"""Launcher: turns lists of tensors into the kernel's device tables, grid and device guard.

One :class:`Bucket` is one kernel launch: all tensors that share a device, a param dtype, a state
dtype and the two compile-time switches (AMSGrad, maximize). A normal model has one bucket.
The bucket's static columns (param, state and step addresses, sizes, chunk map) are built once;
per step only the grad addresses and the per-group scalars can change, and each is uploaded only
when it did change, with a non-blocking copy from pinned memory, so ``step()`` never waits on the
device.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fused_mup import kernels
from fused_mup.kernels.tables import (
    CHUNK_COLS,
    CLIP_SLOTS,
    GROUP_COLS,
    GROUP_TABLE_COLS,
    TENSOR_COLS,
    ChunkCol,
    ClipSlot,
    DerivedGroupCol,
    GroupCol,
    TensorCol,
    Update,
)

__all__ = [
    "Bucket",
    "BucketKey",
    "KernelConfig",
    "TensorSlot",
    "build_bucket",
    "capturing",
    "launch",
    "launch_grad_norm",
    "no_clip",
    "require_triton",
    "rng_count",
    "select_tensors",
    "triton_available_for",
    "update_grad_addresses",
    "upload_group_table",
]


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes. ``chunk_size`` elements per program, walked in ``block``-wide steps.

    64k-element chunks give ~20k programs for a 1.3B model, enough to fill any GPU, while a
    tensor of a few thousand elements is still one program.
    """

    block: int = 1024
    chunk_size: int = 65536
    num_warps: int = 4

    def __post_init__(self) -> None:
        if self.block <= 0 or self.block & (self.block - 1):
            raise ValueError(f"KernelConfig.block must be a power of two, got {self.block}")
        if self.chunk_size <= 0 or self.chunk_size % self.block:
            raise ValueError(
                f"KernelConfig.chunk_size must be a positive multiple of block={self.block}, "
                f"got {self.chunk_size}"
            )


@dataclass(frozen=True)
class BucketKey:
    device: torch.device
    param_dtype: torch.dtype  # real dtype: complex params are updated through view_as_real
    state_dtype: torch.dtype
    amsgrad: bool
    maximize: bool
    update: Update = Update.ROUND  # how low-precision params take the update


@dataclass
class TensorSlot:
    """One parameter as the kernel sees it: real views of param and states, plus its group."""

    param: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    max_exp_avg_sq: torch.Tensor | None
    step: torch.Tensor
    group_index: int
    aux: torch.Tensor | None = None  # Kahan compensation or fp32 master weights


@dataclass(eq=False)
class Bucket:
    """One launch's tables. It keeps no param or state tensor: the tables hold raw addresses,
    which the optimizer checks before every step, so offloading a tensor frees it at once."""

    key: BucketKey
    tensor_table_host: torch.Tensor  # int64 [n, TENSOR_COLS], grad column rewritten per step
    tensor_table: torch.Tensor  # the same on the device
    chunk_table_host: torch.Tensor  # int64 [n_chunks, CHUNK_COLS], every tensor's chunks
    chunk_table: torch.Tensor  # the device table; its first n_programs rows are launched
    done_count: torch.Tensor  # int32 [n], scratch for the last-program-writes-step rule
    n_programs: int  # programs of this step: the chunks of the tensors that have a grad
    partials: torch.Tensor  # fp32 [n_chunks + n_runs], scratch of the grad-norm kernel
    norm_done_count: torch.Tensor  # int32 [1 + n_runs]
    grad_addresses: list[int] = field(default_factory=list)
    # Which tensors the device chunk table launches (None: all).
    selected: tuple[bool, ...] | None = None
    # A CUDA graph captured a launch of this bucket: its device tables are read by address on
    # every replay, so they are never written or freed again (see `_writable`).
    captured: bool = False
    retired: list[torch.Tensor] = field(default_factory=list)  # captured tables replaced since


def _tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[
        dtype
    ]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_importable() -> bool:
    # An import, not find_spec: a triton that is found but fails to import (a broken or
    # mismatched install, or an import hook that refuses it) must count as missing too.
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def require_triton(where: str) -> None:
    """Raises a clear ImportError where the kernel is needed and triton is not installed."""
    if not _triton_importable():
        raise ImportError(
            f"fused_mup: {where} needs the Triton kernel, but triton is not installed. Install "
            "it with `pip install triton` (Linux with CUDA; torch's CUDA wheels bring it), or "
            "use backend='reference' / CPU tensors, which run without triton."
        )


def triton_available_for(device: torch.device) -> bool:
    """Whether the Triton kernel can run on tensors of ``device`` in this process."""
    if device.type == "cpu":
        return _interpreting() and _triton_importable()
    return device.type == "cuda" and _triton_importable()


def _upload(host: torch.Tensor, device: torch.device, out: torch.Tensor | None = None):
    """Host -> device copy that never blocks the host: pinned staging, non_blocking copy."""
    if device.type == "cpu":
        if out is None:
            return host.clone()
        return out.copy_(host)
    # A fresh pinned buffer per upload: the caching host allocator recycles it only after the
    # copy has completed, so a later step cannot overwrite bytes still in flight.
    staging = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
    staging.copy_(host)
    if out is None:
        out = torch.empty(host.shape, dtype=host.dtype, device=device)
    return out.copy_(staging, non_blocking=True)


def build_bucket(
    key: BucketKey,
    slots: list[TensorSlot],
    grad_addresses: list[int],
    config: KernelConfig,
) -> Bucket:
    """Builds the static tables of one launch. Runs only when the set of tensors changes."""
    n = len(slots)
    rows: list[list[int]] = []
    chunks: list[list[int]] = []
    for i, slot in enumerate(slots):
        numel = slot.param.numel()
        # An empty tensor still gets one (empty) program so that its step is counted, as torch
        # counts it.
        n_chunks = max(1, math.ceil(numel / config.chunk_size))
        vmax, aux = slot.max_exp_avg_sq, slot.aux
        row = [0] * TENSOR_COLS
        row[TensorCol.PARAM] = slot.param.data_ptr()
        row[TensorCol.GRAD] = grad_addresses[i]
        row[TensorCol.EXP_AVG] = slot.exp_avg.data_ptr()
        row[TensorCol.EXP_AVG_SQ] = slot.exp_avg_sq.data_ptr()
        row[TensorCol.MAX_EXP_AVG_SQ] = vmax.data_ptr() if vmax is not None else 0
        row[TensorCol.AUX] = aux.data_ptr() if aux is not None else 0
        rows.append(row)
        for c in range(n_chunks):
            chunk = [0] * CHUNK_COLS
            chunk[ChunkCol.TENSOR] = i
            chunk[ChunkCol.START] = c * config.chunk_size
            chunk[ChunkCol.END] = min((c + 1) * config.chunk_size, numel)
            chunk[ChunkCol.GROUP] = slot.group_index
            chunk[ChunkCol.STEP] = slot.step.data_ptr()
            chunk[ChunkCol.N_CHUNKS] = n_chunks
            chunks.append(chunk)
    table = torch.tensor(rows, dtype=torch.int64).reshape(n, TENSOR_COLS)
    chunk_host = torch.tensor(chunks, dtype=torch.int64).reshape(-1, CHUNK_COLS)
    n_runs = -(-len(chunks) // config.block)
    return Bucket(
        key=key,
        tensor_table_host=table,
        tensor_table=_upload(table, key.device),
        chunk_table_host=chunk_host,
        chunk_table=_upload(chunk_host, key.device),
        done_count=torch.zeros(n, dtype=torch.int32, device=key.device),
        n_programs=len(chunks),
        # Per-program partials, then one sum per run of `block` programs (the grad-norm
        # kernel's two-level reduction), and a counter for each level.
        partials=torch.empty(len(chunks) + n_runs, dtype=torch.float32, device=key.device),
        norm_done_count=torch.zeros(1 + n_runs, dtype=torch.int32, device=key.device),
        grad_addresses=list(grad_addresses),
    )


def capturing(device: torch.device) -> bool:
    """Whether work enqueued on ``device`` now is being captured into a CUDA graph."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# The device tables of a bucket that a captured graph reads by address.
_GRAPH_TABLES = ("tensor_table", "chunk_table", "done_count", "partials", "norm_done_count")


def _writable(bucket: Bucket, name: str) -> torch.Tensor:
    """``bucket.<name>``, safe to write: once a graph captured it, a fresh copy takes its place
    and the captured one is left as it is (the optimizer keeps it alive for the graph)."""
    table = getattr(bucket, name)
    if bucket.captured:
        bucket.retired += [getattr(bucket, n) for n in _GRAPH_TABLES]
        fresh = {n: getattr(bucket, n).clone() for n in _GRAPH_TABLES}
        for n, t in fresh.items():
            setattr(bucket, n, t)
        bucket.captured = False
        table = fresh[name]
    return table


def update_grad_addresses(bucket: Bucket, grad_addresses: list[int]) -> None:
    """Points the table at this step's grads; uploads only if any grad moved."""
    if grad_addresses == bucket.grad_addresses:
        return
    bucket.tensor_table_host[:, TensorCol.GRAD] = torch.tensor(grad_addresses, dtype=torch.int64)
    _upload(bucket.tensor_table_host, bucket.key.device, out=_writable(bucket, "tensor_table"))
    bucket.grad_addresses = list(grad_addresses)


def select_tensors(bucket: Bucket, selected: tuple[bool, ...] | None) -> None:
    """Launches only the chunks of the selected tensors (None: all): a param without a grad this
    step (an MoE expert without tokens) is skipped, as torch skips it, without a new plan."""
    if selected == bucket.selected:
        return
    host = bucket.chunk_table_host
    if selected is not None and not all(selected):
        keep = torch.tensor(selected, dtype=torch.bool)[host[:, ChunkCol.TENSOR]]
        host = host[keep]
    n = host.shape[0]
    if n:
        _upload(host, bucket.key.device, out=_writable(bucket, "chunk_table")[:n])
    bucket.n_programs = n
    bucket.selected = selected


def upload_group_table(rows: Sequence[Sequence[float]], device: torch.device) -> torch.Tensor:
    """The group table on ``device``: each row's ``GroupCol`` fields (an
    :class:`~fused_mup.hyperparams.Effective`, or any sequence in ``GroupCol`` order),
    then the ``DerivedGroupCol`` columns; fp64, ``GROUP_TABLE_COLS`` per group."""
    given = torch.tensor([list(r[:GROUP_COLS]) for r in rows], dtype=torch.float64)
    given = given.reshape(-1, GROUP_COLS)
    host = torch.empty(given.shape[0], GROUP_TABLE_COLS, dtype=torch.float64)
    host[:, :GROUP_COLS] = given
    # log(0) = -inf gives beta**step = 0, as it should for beta = 0.
    host[:, DerivedGroupCol.LOG_BETA1] = given[:, GroupCol.BETA1].log()
    host[:, DerivedGroupCol.LOG_BETA2] = given[:, GroupCol.BETA2].log()
    return _upload(host, device)


def _device_guard(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def launch(
    bucket: Bucket,
    groups: torch.Tensor,
    grad_scale: torch.Tensor,
    found_inf: torch.Tensor,
    config: KernelConfig,
    clip: torch.Tensor | None = None,
    seed: int = 0,
) -> None:
    """One AdamW launch for the whole bucket.

    Args:
        clip: the clip buffer (``ClipSlot``) from :func:`launch_grad_norm`, or None for no
            clipping.
        seed: stochastic-rounding seed (used only by ``Update.STOCHASTIC`` buckets).
    """
    if bucket.n_programs == 0:
        return
    key = bucket.key
    if clip is None:
        clip = no_clip(key.device)
    bucket.captured |= capturing(key.device)
    with _device_guard(key.device):
        kernels.adamw_kernel[(bucket.n_programs,)](
            bucket.tensor_table,
            bucket.chunk_table,
            groups,
            bucket.done_count,
            grad_scale,
            found_inf,
            clip,
            seed,
            rng_count(key.device),
            PARAM_DTYPE=_tl_dtype(key.param_dtype),
            STATE_DTYPE=_tl_dtype(key.state_dtype),
            AMSGRAD=key.amsgrad,
            MAXIMIZE=key.maximize,
            UPDATE=key.update,
            BLOCK=config.block,
            num_warps=config.num_warps,
        )


_RNG_COUNT: dict[torch.device, torch.Tensor] = {}


def rng_count(device: torch.device) -> torch.Tensor:
    """int64 [2] on ``device``: stochastic-rounding launches counted so far (the noise key once
    the fp32 step stops counting at 2**24), and the counting kernel's scratch. One per device
    for the process, never freed: a plan rebuild, a resume or a CUDA graph replay reads and
    advances the same buffer."""
    if device not in _RNG_COUNT:
        _RNG_COUNT[device] = torch.zeros(2, dtype=torch.int64, device=device)
    return _RNG_COUNT[device]


_NO_CLIP: dict[torch.device, torch.Tensor] = {}


def no_clip(device: torch.device) -> torch.Tensor:
    """The clip buffer that means "no clipping": norm 0, max_norm inf, coefficient 1."""
    if device not in _NO_CLIP:
        # Filled on the device: torch.tensor(..., device=cuda) would be a synchronizing copy.
        buffer = torch.zeros(CLIP_SLOTS, device=device)
        buffer[ClipSlot.MAX_NORM] = float("inf")
        _NO_CLIP[device] = buffer
    return _NO_CLIP[device]


def launch_grad_norm(
    bucket: Bucket,
    grad_scale: torch.Tensor,
    clip: torch.Tensor,
    max_norm: float,
    accumulate: bool,
    config: KernelConfig,
) -> None:
    """One launch: writes sum(grad**2 / grad_scale**2), max_norm and a non-finite flag to the
    clip buffer, adding to its SUMSQ slot when ``accumulate`` (for a second bucket)."""
    if bucket.n_programs == 0:
        return
    bucket.captured |= capturing(bucket.key.device)
    with _device_guard(bucket.key.device):
        kernels.grad_norm_kernel[(bucket.n_programs,)](
            bucket.tensor_table,
            bucket.chunk_table,
            bucket.partials,
            bucket.norm_done_count,
            grad_scale,
            clip,
            bucket.n_programs,
            float(max_norm),
            int(accumulate),
            PARAM_DTYPE=_tl_dtype(bucket.key.param_dtype),
            BLOCK=config.block,
            num_warps=config.num_warps,
        )
