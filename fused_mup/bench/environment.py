"""Where a result was measured: device, driver, library versions, git commit, load, date."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from fused_mup import __version__ as fused_mup_version

__all__ = ["device_slug", "environment_info", "free_memory_bytes"]


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_smi(query: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _triton_version() -> str | None:
    try:
        return importlib.import_module("triton").__version__
    except ImportError:
        return None


def environment_info(device: torch.device) -> dict[str, Any]:
    """Device name, driver, library versions, git commit, load average and UTC time."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "fused_mup": fused_mup_version,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in load] if load else None,
        "date": dt.date.today().isoformat(),
        "time_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=torch.cuda.get_device_name(device),
            device_memory_gib=round(props.total_memory / 2**30, 1),
            cuda_runtime=torch.version.cuda,
            driver=_nvidia_smi("driver_version"),
        )
    else:
        info.update(device_name=_cpu_name(), driver=None, cuda_runtime=torch.version.cuda)
    return info


def device_slug(meta: dict[str, Any]) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``h100-80gb-hbm3``; CPU runs -> ``cpu``."""
    if not str(meta.get("device", "")).startswith("cuda"):
        return "cpu"
    name = str(meta.get("device_name", "gpu")).lower().removeprefix("nvidia ")
    return re.sub(r"[^a-z0-9.]+", "-", name).strip("-") or "gpu"


def free_memory_bytes(device: torch.device) -> int | None:
    """Free device memory (CUDA) or available RAM (CPU, Linux); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None
