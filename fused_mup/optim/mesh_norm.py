"""How a grad norm over DTensor params (FSDP2, tensor parallel, both) adds up across ranks.

Each rank's kernel sums the squares of its local shards. Over a device mesh of any number of
dims, the norm of the whole model is the sum of those over the mesh's ranks, where a param that
is Replicate on some mesh dims counts once, not once per copy: its local sum is weighted by
1 / (the product of those dims' sizes). torch's clip_grad_norm_ over DTensors is the oracle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from math import prod
from typing import Any

import torch.distributed as dist
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None

__all__ = ["MeshNorm", "Unsupported", "mesh_norm"]


@dataclass(frozen=True)
class MeshNorm:
    """What the grad-norm pass adds to each rank's sum of squares."""

    # Summed over in turn, they sum over every rank of the mesh: one group (WORLD) when the
    # mesh spans all ranks, else one per mesh dim.
    groups: tuple[Any, ...]
    # (1 - 1/r, flat indices) per replication factor r > 1: the share of those params' local
    # sums of squares that the other r - 1 copies already count. Every other placement but
    # Partial shards (Shard, and FSDP2's _StridedShard, for which is_shard() is False).
    over_counted: tuple[tuple[float, tuple[int, ...]], ...]


@dataclass(frozen=True)
class Unsupported:
    """Stands in for a MeshNorm where a fused grad norm would be wrong; clipping raises."""

    why: str

    def error(self) -> NotImplementedError:
        return NotImplementedError(
            "fused clip_grad_norm_ over DTensor params needs them all on one device mesh, "
            f"with Shard or Replicate placements (not Partial); got {self.why}. "
            "Use torch.nn.utils.clip_grad_norm_."
        )


def mesh_norm(
    entries: Iterable[tuple[int, Tensor, Tensor | None, str]],
) -> MeshNorm | Unsupported | None:
    """From (flat index, param, grad or None, name) per plan member: None without DTensors."""
    if DTensor is None:
        return None
    entries = list(entries)
    dtensors = [e for e in entries if isinstance(e[1], DTensor)]
    if not dtensors:
        return None
    if len(dtensors) != len(entries):
        plain = next(name for _, p, _, name in entries if not isinstance(p, DTensor))
        return Unsupported(f"a mix of DTensors and plain tensors ({plain})")
    meshes = {p.device_mesh for _, p, _, _ in entries}
    if len(meshes) > 1:
        return Unsupported(f"params on {len(meshes)} device meshes {sorted(map(str, meshes))}")
    (mesh,) = meshes
    by_factor: dict[int, list[int]] = {}
    for flat, p, g, name in entries:
        if isinstance(g, DTensor) and g.placements != p.placements:
            return Unsupported(f"a grad placed {g.placements} on {name} placed {p.placements}")
        if any(pl.is_partial() for pl in p.placements):
            return Unsupported(f"placements {p.placements} on {name}")
        factor = prod(mesh.size(d) for d, pl in enumerate(p.placements) if pl.is_replicate())
        if factor > 1:
            by_factor.setdefault(factor, []).append(flat)
    if mesh.size() == dist.get_world_size():
        groups: tuple[Any, ...] = (dist.group.WORLD,)  # one all-reduce
    else:
        groups = tuple(mesh.get_group(d) for d in range(mesh.ndim))
    over_counted = tuple((1.0 - 1.0 / r, tuple(idx)) for r, idx in sorted(by_factor.items()))
    return MeshNorm(groups, over_counted)
