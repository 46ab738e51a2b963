"""The kernels compile for sm_80 and sm_90 on a machine without a GPU, and their code has the
properties the design relies on, read off the PTX and SASS (not timed):

- alignment is decided per tensor at run time: one kernel holds both the 16-byte vector loop and
  the scalar one, so a misaligned tensor in a launch does not cost the others their vectors;
- the step counters' atomics are acq_rel, and the clip / AMSGrad min and max propagate NaN;
- every fp32 division is IEEE round-to-nearest (``div.rn``), as torch's;
- no shared-memory layout conversion in any variant (bf16 and fp32 tensors share one layout):
  every variant has the fp32 kernel's barriers and shared stores, no more (stochastic rounding:
  those of its one extra end-of-program atomic);
- the bias corrections take no long chain of fp64 multiplies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module", params=[80, 90], ids=["sm80", "sm90"])
def compiled(request):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, without its warning
    out = subprocess.run(
        [sys.executable, str(HERE / "aot_compile.py"), str(request.param)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_variant_compiles(compiled):
    # (fp32, fp16: 1 update mode; bf16, bf16 with fp32 states: 4) x AMSGrad = 20.
    assert len([k for k in compiled if k.startswith("adamw-")]) == 20
    assert len([k for k in compiled if k.startswith("norm-")]) == 3


@pytest.mark.parametrize("amsgrad", [0, 1])
def test_vector_and_scalar_loops_share_one_kernel(compiled, amsgrad):
    ptx = compiled[f"adamw-fp32-amsgrad{amsgrad}-update0"]["ptx"]
    loaded, stored = 4 + amsgrad, 3 + amsgrad  # param, grad, m, v (+ max); param, m, v (+ max)
    # 8 elements per thread: 2 x v4 per tensor in the aligned loop ...
    assert ptx.get("ld.global.v4.b32", 0) >= 2 * loaded, ptx
    assert ptx.get("st.global.v4.b32", 0) >= 2 * stored, ptx
    # ... and scalar accesses in the loop a misaligned tensor takes (and the masked tail).
    assert ptx.get("ld.global.b32", 0) >= 8 * loaded, ptx
    assert compiled["norm-fp32"]["ptx"].get("ld.global.v4.b32", 0) >= 2


def test_bf16_kernels_use_vector_accesses(compiled):
    # bf16 params with fp32 states: 16-byte accesses to fp32 tensors, 8-byte ones to bf16
    # tensors (one thread layout). Round loads param and grad in bf16; master loads only the
    # grad in bf16 (the param it reads is the fp32 master copy).
    for update, bf16_loaded, fp32_loaded in ((0, 2, 2), (3, 1, 3)):
        ptx = compiled[f"adamw-bf16-fp32-amsgrad0-update{update}"]["ptx"]
        assert ptx.get("ld.global.v4.b32", 0) >= 2 * fp32_loaded, (update, ptx)
        assert ptx.get("ld.global.v2.b32", 0) >= 2 * bf16_loaded, (update, ptx)
    ptx = compiled["adamw-bf16-amsgrad0-update0"]["ptx"]
    assert ptx.get("ld.global.v4.b32", 0) >= 4, ptx  # bf16 states: 16 bytes, 8 elements


def test_atomics_are_acq_rel_and_min_max_propagate_nan(compiled):
    for key, v in compiled.items():
        atomics = {k for k in v["ptx"] if k.startswith("atom.")}
        assert atomics and all(".acq_rel." in a for a in atomics), (key, atomics)
        if key.startswith("adamw-"):
            assert v["ptx"].get("min.NaN.f32", 0) >= 1, key  # the clip coefficient
            if "amsgrad1" in key:
                assert v["ptx"].get("max.NaN.f32", 0) >= 8, key  # every element of the max


def test_every_division_is_correctly_rounded(compiled):
    # 1 / grad_scale and the clip coefficient divide as torch does: div.rn, never the
    # approximate div.full.f32 (up to 2 ulp off) that a plain `/` compiles to.
    for key, v in compiled.items():
        divisions = {k for k in v["ptx"] if k.startswith("div.")}
        assert divisions == {"div.rn.f32"}, (key, divisions)


def _atomics(variant: dict) -> int:
    return sum(n for k, n in variant["ptx"].items() if k.startswith("atom."))


def test_no_layout_conversions_through_shared_memory(compiled):
    base = compiled["adamw-fp32-amsgrad0-update0"]
    for key, v in compiled.items():
        if key.startswith("adamw-"):
            sass = v["sass"]
            # Stochastic rounding's launch count is one more end-of-program atomic, whose result
            # reaches every thread through shared memory: 2 barriers and 1 shared store each.
            extra = _atomics(v) - _atomics(base)
            assert extra == (1 if key.endswith("update2") else 0), (key, v["ptx"])
            assert sass["bar_sync"] <= base["sass"]["bar_sync"] + 2 * extra, (key, sass)
            assert sass["shared_st"] <= base["sass"]["shared_st"] + extra, (key, sass)
            assert v["shared"] <= 16, (key, v["shared"])


def test_short_fp64_prologue(compiled):
    # Before: beta**step by 31 squarings per beta, 143 fp64 instructions before the first
    # vector load of the fp32 kernel; now two fp64 exps, a divide and a square root.
    for key, v in compiled.items():
        if key.startswith("adamw-"):
            assert 0 < v["sass"]["prologue_fp64"] <= 80, (key, v["sass"])
