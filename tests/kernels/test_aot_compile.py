"""The kernels compile for sm_80 and sm_90 on a machine without a GPU, and their code has the
properties the design relies on, read off the PTX and SASS (not timed):

- alignment is decided per tensor at run time: one kernel holds both the 16-byte vector loop and
  the scalar one, so a misaligned tensor in a launch does not cost the others their vectors;
- the step counters' atomics are acq_rel, and the clip / AMSGrad min and max propagate NaN.
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


def test_atomics_are_acq_rel_and_min_max_propagate_nan(compiled):
    for key, v in compiled.items():
        atomics = {k for k in v["ptx"] if k.startswith("atom.")}
        assert atomics and all(".acq_rel." in a for a in atomics), (key, atomics)
        if key.startswith("adamw-"):
            assert v["ptx"].get("min.NaN.f32", 0) >= 1, key  # the clip coefficient
            if "amsgrad1" in key:
                assert v["ptx"].get("max.NaN.f32", 0) >= 8, key  # every element of the max
