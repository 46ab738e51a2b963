"""The table contract between the launcher and the kernels, defined once.

A launch finds its tensors through small device tables that ``fused_mup.launcher`` writes and
every kernel reads:

- tensor table, int64 ``[n_tensors, TENSOR_COLS]``, one row per tensor (:class:`TensorCol`): its
  addresses, the only part that changes per step (grads move);
- chunk table, int64 ``[n_programs, CHUNK_COLS]``, one row per program (:class:`ChunkCol`):
  everything else a program needs, so that its first load gives it every other address;
- group table, fp64 ``[n_groups, GROUP_TABLE_COLS]``, one row per param group: the optimizer's
  :class:`GroupCol` values, then the launcher's :class:`DerivedGroupCol`;
- clip buffer, fp32 ``[CLIP_SLOTS]``, written by the grad-norm pass (:class:`ClipSlot`).

Python code uses the enums; jit code may read only ``tl.constexpr`` globals (the interpreter
accepts plain ints, a real compile does not), so each column has a constexpr counterpart below.
The Python half needs no triton: the reference path and the presets import it on any platform.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "CHUNK_COLS",
    "CLIP_SLOTS",
    "GROUP_COLS",
    "GROUP_TABLE_COLS",
    "TENSOR_COLS",
    "ChunkCol",
    "ClipSlot",
    "DerivedGroupCol",
    "GroupCol",
    "TensorCol",
    "Update",
]


class TensorCol(IntEnum):
    """Columns of the tensor table: the addresses of one tensor's data."""

    PARAM = 0
    GRAD = 1
    EXP_AVG = 2
    EXP_AVG_SQ = 3
    MAX_EXP_AVG_SQ = 4  # 0 unless AMSGrad
    AUX = 5  # Kahan compensation or fp32 master weights; 0 otherwise


class ChunkCol(IntEnum):
    """Columns of the chunk table: which tensor a program updates, which elements, and the
    per-tensor scalars it needs (static: written once per bucket build)."""

    TENSOR = 0  # row of the tensor table
    START = 1  # first element, a multiple of BLOCK
    END = 2  # one past the last element: min(START + chunk_size, numel)
    GROUP = 3  # row of the group table
    STEP = 4  # address of the tensor's fp32 0-d step count
    N_CHUNKS = 5  # programs that update this tensor


class GroupCol(IntEnum):
    """Columns of the group table (fp64): the effective hyperparameters of one param group,
    named after the fields of ``fused_mup.hyperparams.Effective`` that fill them."""

    LR = 0  # Effective.lr: lr · lr_mult
    DECAY = 1  # fraction of the param removed by weight decay this step
    BETA1 = 2
    BETA2 = 3
    EPS = 4


class DerivedGroupCol(IntEnum):
    """Group-table columns the launcher derives from the :class:`GroupCol` ones, so that no
    program computes them: ``log(beta)`` turns ``beta**step`` into one fp64 exp."""

    LOG_BETA1 = 5
    LOG_BETA2 = 6


class ClipSlot(IntEnum):
    """Slots of the clip buffer."""

    SUMSQ = 0  # sum of squared (unscaled) grads
    MAX_NORM = 1  # inf: no clipping
    NONFINITE = 2  # 1.0 if SUMSQ is inf or NaN: GradScaler's found_inf


class Update(IntEnum):
    """How a low-precision param takes its update (the kernel's UPDATE switch)."""

    ROUND = 0  # round to nearest even
    KAHAN = 1  # AUX is a compensation buffer in the param dtype
    STOCHASTIC = 2  # bf16 only: unbiased stochastic rounding, counter-based RNG
    MASTER = 3  # AUX holds fp32 master weights; the param is their rounded copy


TENSOR_COLS = len(TensorCol)
CHUNK_COLS = len(ChunkCol)
GROUP_COLS = len(GroupCol)  # values per group the optimizer passes to the launcher
GROUP_TABLE_COLS = GROUP_COLS + len(DerivedGroupCol)
CLIP_SLOTS = len(ClipSlot)

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU path and the presets run without triton
    triton = None

if triton is not None:
    # The constexpr counterparts, for jit code.
    C_TENSOR_COLS = tl.constexpr(TENSOR_COLS)
    C_PARAM = tl.constexpr(TensorCol.PARAM.value)
    C_GRAD = tl.constexpr(TensorCol.GRAD.value)
    C_EXP_AVG = tl.constexpr(TensorCol.EXP_AVG.value)
    C_EXP_AVG_SQ = tl.constexpr(TensorCol.EXP_AVG_SQ.value)
    C_MAX_EXP_AVG_SQ = tl.constexpr(TensorCol.MAX_EXP_AVG_SQ.value)
    C_AUX = tl.constexpr(TensorCol.AUX.value)

    C_CHUNK_COLS = tl.constexpr(CHUNK_COLS)
    C_CHUNK_TENSOR = tl.constexpr(ChunkCol.TENSOR.value)
    C_CHUNK_START = tl.constexpr(ChunkCol.START.value)
    C_CHUNK_END = tl.constexpr(ChunkCol.END.value)
    C_CHUNK_GROUP = tl.constexpr(ChunkCol.GROUP.value)
    C_CHUNK_STEP = tl.constexpr(ChunkCol.STEP.value)
    C_CHUNK_N_CHUNKS = tl.constexpr(ChunkCol.N_CHUNKS.value)

    C_GROUP_TABLE_COLS = tl.constexpr(GROUP_TABLE_COLS)
    C_LR = tl.constexpr(GroupCol.LR.value)
    C_DECAY = tl.constexpr(GroupCol.DECAY.value)
    C_BETA1 = tl.constexpr(GroupCol.BETA1.value)
    C_BETA2 = tl.constexpr(GroupCol.BETA2.value)
    C_EPS = tl.constexpr(GroupCol.EPS.value)
    C_LOG_BETA1 = tl.constexpr(DerivedGroupCol.LOG_BETA1.value)
    C_LOG_BETA2 = tl.constexpr(DerivedGroupCol.LOG_BETA2.value)

    C_SUMSQ = tl.constexpr(ClipSlot.SUMSQ.value)
    C_MAX_NORM = tl.constexpr(ClipSlot.MAX_NORM.value)
    C_NONFINITE = tl.constexpr(ClipSlot.NONFINITE.value)

    C_UPDATE_KAHAN = tl.constexpr(Update.KAHAN.value)
    C_UPDATE_STOCHASTIC = tl.constexpr(Update.STOCHASTIC.value)
    C_UPDATE_MASTER = tl.constexpr(Update.MASTER.value)

    @triton.jit
    def address(table_entry, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
        """An address from a table, as a pointer; ALIGNED tells the compiler it is 16-byte
        aligned (the launcher checked), which lets it use 16-byte vector loads and stores."""
        ptr = table_entry.to(tl.pointer_type(DTYPE))
        if ALIGNED:
            # On the pointer, not the integer: the compiler's alignment analysis does not see
            # through the int-to-pointer cast (checked in the sm_90 PTX: v4 accesses only so).
            ptr = tl.multiple_of(ptr, 16)
        return ptr
