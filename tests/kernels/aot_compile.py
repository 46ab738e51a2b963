"""Compiles the kernels for NVIDIA targets without a GPU (Triton's own ptxas), in a process
where TRITON_INTERPRET is unset. Run by tests/kernels/test_aot_compile.py; prints one JSON line.

The interpreter accepts code that a real compile rejects (non-constexpr globals, for one), so
this is the CPU's check that the kernels build for the GPUs they are meant for. For every variant
it reports what the tests and the occupancy table (``bench/results/kernel-occupancy/``) read:

- ``ptx``: counts of global loads and stores by width (``ld.global.v4.b32`` ...), and of the
  step counter's atomics by memory order;
- ``regs``, ``shared``: registers per thread (from the cubin, ``cuobjdump --dump-resource-usage``)
  and dynamic shared memory in bytes (Triton's metadata);
- ``sass``: instruction counts read off ``cuobjdump -sass``: all, fp64 ones, ``BAR.SYNC``,
  shared-memory stores and loads, ``prologue``: instructions before the first 16-byte global
  load (how long a program waits before its first data load), and ``prologue_fp64``: the fp64
  ones among them.

Usage: ``python aot_compile.py [ARCH] [--adamw-only|--norm-only] [--num-warps N]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import tempfile
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
    "seed": "i32",
    "rng_count_ptr": "*i64",
}
NORM_SIGNATURE = {
    "tensor_table_ptr": "*i64",
    "chunk_table_ptr": "*i64",
    "partials_ptr": "*fp32",
    "done_count_ptr": "*i32",
    "grad_scale_ptr": "*fp32",
    "clip_ptr": "*fp32",
    "n_programs": "i32",
    "max_norm": "fp32",
    "accumulate": "i32",
}
# (name, param dtype, state dtype); bf16 params take every update mode.
ADAMW_DTYPES = [
    ("fp32", tl.float32, tl.float32),
    ("bf16", tl.bfloat16, tl.bfloat16),
    ("bf16-fp32", tl.bfloat16, tl.float32),
    ("fp16", tl.float16, tl.float16),
]
NORM_DTYPES = [("fp32", tl.float32), ("bf16", tl.bfloat16), ("fp16", tl.float16)]
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_SASS_LINE = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_FP64 = re.compile(r"^(D[A-Z]+|MUFU\.\w+64\w*|F2F\.F64|F2F\.F32\.F64|I2F\.F64\S*|F2I\S*\.F64\S*)")


def _tool(name: str) -> str:
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


def sass_counts(cubin: bytes) -> tuple[int, dict[str, int]]:
    """Registers per thread and SASS instruction counts of one cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sass = subprocess.run(
            [_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True
        ).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    ops = [m.group(2) for line in sass.splitlines() if (m := _SASS_LINE.match(line))]
    first_vector = next((i for i, op in enumerate(ops) if op.startswith("LDG.E.128")), -1)
    return regs, {
        "prologue_fp64": sum(1 for op in ops[:first_vector] if _FP64.match(op)),
        "total": len(ops),
        "fp64": sum(1 for op in ops if _FP64.match(op)),
        "bar_sync": sum(1 for op in ops if op.startswith("BAR.SYNC")),
        "shared_st": sum(1 for op in ops if op.startswith("STS")),
        "shared_ld": sum(1 for op in ops if op.startswith("LDS")),
        "prologue": first_vector,
    }


def compile_one(fn, signature, constexprs, arch, num_warps=4) -> dict:
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    kernel = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps}
    )
    ptx = kernel.asm["ptx"]
    regs, sass = sass_counts(kernel.asm["cubin"])
    return {
        "ptx": dict(
            Counter(
                re.findall(
                    r"(ld\.global[\w.]*|st\.global[\w.]*|atom\.[\w.]*|m(?:in|ax)\.NaN\.f32"
                    r"|div[\w.]*\.f32)",
                    ptx,
                )
            )
        ),
        "regs": regs,
        "shared": int(kernel.metadata.shared),
        "num_warps": num_warps,
        "sass": sass,
    }


def adamw_variants():
    """Every AdamW constexpr combination the launcher can pick, keyed by a readable name."""
    for (name, p, s), amsgrad in itertools.product(ADAMW_DTYPES, (False, True)):
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
                "BLOCK": 1024,
            }
            yield f"adamw-{name}-amsgrad{int(amsgrad)}-update{update}", const


def norm_variants():
    for name, p in NORM_DTYPES:
        yield f"norm-{name}", {"PARAM_DTYPE": p, "BLOCK": 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("arch", nargs="?", type=int, default=90)
    parser.add_argument("--adamw-only", action="store_true")
    parser.add_argument("--norm-only", action="store_true")
    parser.add_argument("--num-warps", type=int, default=4)
    args = parser.parse_args()
    out = {}
    if not args.norm_only:
        for key, const in adamw_variants():
            out[key] = compile_one(adamw_kernel, ADAMW_SIGNATURE, const, args.arch, args.num_warps)
    if not args.adamw_only:
        for key, const in norm_variants():
            out[key] = compile_one(grad_norm_kernel, NORM_SIGNATURE, const, args.arch)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
