"""Compiles the kernels for NVIDIA targets without a GPU (Triton's own ptxas), in a process
where TRITON_INTERPRET is unset. Run by tests/test_aot_compile.py; prints one JSON line.

The interpreter accepts code that a real compile rejects (non-constexpr globals, for one), so
this is the CPU's check that the kernels build for the GPUs they are meant for.
"""

import itertools
import json
import re
import sys
from collections import Counter

import triton
import triton.language as tl
from fused_mup.kernels import Update, adamw_kernel, grad_norm_kernel
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ADAMW_SIGNATURE = {
    "tensor_table_ptr": "*i64",
    "chunk_table_ptr": "*i64",
    "group_table_ptr": "*fp64",
    "done_count_ptr": "*i32",
    "grad_scale_ptr": "*fp32",
    "found_inf_ptr": "*fp32",
    "clip_ptr": "*fp32",
    "chunk_size": "i32",
    "seed": "i32",
}
NORM_SIGNATURE = {
    "tensor_table_ptr": "*i64",
    "chunk_table_ptr": "*i64",
    "partials_ptr": "*fp32",
    "done_count_ptr": "*i32",
    "grad_scale_ptr": "*fp32",
    "clip_ptr": "*fp32",
    "n_programs": "i32",
    "chunk_size": "i32",
    "max_norm": "fp32",
    "accumulate": "i32",
}


def compile_one(fn, signature, constexprs, arch):
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    return Counter(re.findall(r"(ld\.global[\w.]*|st\.global[\w.]*)", kernel.asm["ptx"]))


def main() -> None:
    arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    out = {}
    dtypes = [
        ("fp32", tl.float32, tl.float32),
        ("bf16", tl.bfloat16, tl.bfloat16),
        ("bf16-fp32", tl.bfloat16, tl.float32),
        ("fp16", tl.float16, tl.float16),
    ]
    for (name, p, s), amsgrad, aligned in itertools.product(dtypes, (False, True), (False, True)):
        updates = [Update.ROUND]
        if p == tl.bfloat16:
            updates += [Update.KAHAN, Update.STOCHASTIC, Update.MASTER]
        for update in updates:
            const = {
                "PARAM_DTYPE": p,
                "STATE_DTYPE": s,
                "AMSGRAD": amsgrad,
                "MAXIMIZE": amsgrad,  # both switches on together, to keep the count small
                "UPDATE": update,
                "ALIGNED": aligned,
                "BLOCK": 1024,
            }
            key = f"adamw-{name}-amsgrad{int(amsgrad)}-update{update}-aligned{int(aligned)}"
            out[key] = compile_one(adamw_kernel, ADAMW_SIGNATURE, const, arch)
    for (name, p), aligned in itertools.product(
        (("fp32", tl.float32), ("bf16", tl.bfloat16), ("fp16", tl.float16)), (False, True)
    ):
        const = {"PARAM_DTYPE": p, "ALIGNED": aligned, "BLOCK": 1024}
        key = f"norm-{name}-aligned{int(aligned)}"
        out[key] = compile_one(grad_norm_kernel, NORM_SIGNATURE, const, arch)
    print(json.dumps({k: dict(v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
