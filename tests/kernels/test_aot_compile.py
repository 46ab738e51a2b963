"""The kernels compile for sm_80 and sm_90 on a machine without a GPU, and the aligned variant
uses 16-byte vector accesses in its unmasked loop (read off the PTX, not timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module", params=[80, 90], ids=["sm80", "sm90"])
def ptx_counts(request):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
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


def test_every_variant_compiles(ptx_counts):
    # (fp32, fp16: 1 update mode; bf16, bf16 with fp32 states: 4) x AMSGrad x aligned = 40.
    assert len([k for k in ptx_counts if k.startswith("adamw-")]) == 40
    assert len([k for k in ptx_counts if k.startswith("norm-")]) == 6


def test_aligned_fp32_kernel_uses_vector_accesses(ptx_counts):
    aligned = ptx_counts["adamw-fp32-amsgrad0-update0-aligned1"]
    unaligned = ptx_counts["adamw-fp32-amsgrad0-update0-aligned0"]
    # 4 loaded tensors (param, grad, m, v) and 3 stored, 8 elements per thread: 2 x v4 each.
    assert aligned.get("ld.global.v4.b32", 0) >= 8, aligned
    assert aligned.get("st.global.v4.b32", 0) >= 6, aligned
    assert unaligned.get("ld.global.v4.b32", 0) == 0, unaligned
    assert ptx_counts["norm-fp32-aligned1"].get("ld.global.v4.b32", 0) >= 2
