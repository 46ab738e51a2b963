"""Distributed checkpoints (``torch.distributed.checkpoint``) across optimizer classes.

``fused_mup.AdamW``'s param groups hold torch.optim.AdamW's keys plus
:data:`~fused_mup.optim.validation.EXTRA_GROUP_KEYS` (``lr_mult``, ``wd_mult``,
``weight_decay_mode``, ``bf16_update``, ``peak_lr``). A strict ``dcp.load`` fails on any key the
template has and the checkpoint lacks, and never reads a key the template lacks, so:

* torch → fused: a torch.optim.AdamW checkpoint lacks the extra keys;
* fused → torch: torch's template never reads them, and a μP run would resume at the
  unmultiplied lr and decay.

:class:`LoadPlanner` fixes both for ``dcp.load(..., planner=LoadPlanner())``. Where the load is
not yours to call (torchtitan's ``CheckpointManager`` calls ``dcp.load`` on its
``OptimizersContainer``), :func:`drop_default_group_keys` and :func:`fill_default_group_keys`
make a fused_mup optimizer state dict with default extras look exactly like torch's.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import MutableMapping
from typing import Any

from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem

from fused_mup.optim import to_torch_state_dict
from fused_mup.optim.validation import EXTRA_GROUP_KEYS
from fused_mup.torch_compat import get_element, set_element

__all__ = ["LoadPlanner", "drop_default_group_keys", "fill_default_group_keys"]

# "...param_groups.<index or fqn>.<key>": a group key in a DCP-flattened state dict, both in
# get_optimizer_state_dict's nested format (index) and its flattened one (a param's fqn).
_GROUP_KEY = re.compile(r"(?:^|\.)param_groups\.(?P<group>.+)\.(?P<key>[^.]+)$")
_FLAT_PREFIX = "param_groups."


def _group_key(flat_key: str) -> tuple[str, str] | None:
    """(group prefix, key name) of a flattened group entry, else None."""
    m = _GROUP_KEY.search(flat_key)
    return None if m is None else (flat_key[: m.start("key")], m.group("key"))


def _is_default(key: str, value: Any) -> bool:
    default = EXTRA_GROUP_KEYS[key]
    return value is None if default is None else value == default


class LoadPlanner(DefaultLoadPlanner):
    """A strict ``DefaultLoadPlanner`` that loads optimizer checkpoints across
    ``torch.optim.AdamW`` and ``fused_mup.AdamW``, in both directions.

    * A template group key of fused_mup's (``lr_mult``, ...) that the checkpoint lacks (a
      torch checkpoint) is not read: it keeps the live optimizer's value, so a μP optimizer
      resumes a torch run with its multipliers. Every other missing key still raises.
    * fused_mup's group keys that the checkpoint has and the template lacks (a torch
      optimizer's template) are read and baked into the group as
      :func:`fused_mup.to_torch_state_dict` does (``lr`` · ``lr_mult``, the equivalent
      ``weight_decay``), then removed, so torch runs each group as fused_mup did.

    Works for ``get_state_dict`` / ``get_optimizer_state_dict`` templates, nested or with
    ``flatten_optimizer_state_dict=True``::

        dcp.load(state, checkpoint_id=path, planner=fused_mup.dcp.LoadPlanner())
    """

    def __init__(self, flatten_sharded_tensors: bool = True) -> None:
        super().__init__(flatten_state_dict=True, flatten_sharded_tensors=flatten_sharded_tensors)
        # group prefix -> flat keys of that group the template reads; baked once all arrived
        self._bake: dict[str, list[str]] = {}
        self._pending: dict[str, int] = {}

    def set_up_planner(self, state_dict, metadata=None, is_coordinator: bool = False) -> None:
        super().set_up_planner(state_dict, metadata, is_coordinator)
        saved = metadata.state_dict_metadata
        groups: dict[str, dict[str, str]] = defaultdict(dict)  # prefix -> key name -> flat key
        for flat_key in self.state_dict:
            if (parsed := _group_key(flat_key)) is not None:
                groups[parsed[0]][parsed[1]] = flat_key
        # torch -> fused: keep the live value of an extra key the checkpoint does not have.
        for keys in groups.values():
            for name, flat_key in list(keys.items()):
                if name in EXTRA_GROUP_KEYS and flat_key not in saved:
                    del self.state_dict[flat_key], keys[name]
        # fused -> torch: read the checkpoint's extra keys into a group that has none.
        for flat_key in saved:
            parsed = _group_key(flat_key)
            if parsed is None or parsed[1] not in EXTRA_GROUP_KEYS or flat_key in self.state_dict:
                continue
            prefix, name = parsed
            lr_key = groups.get(prefix, {}).get("lr")
            if lr_key is None or any(k in EXTRA_GROUP_KEYS for k in groups[prefix]):
                continue  # no such group here, or a fused_mup template (it keeps its own)
            lr_path = self.mappings[lr_key]
            self.state_dict[flat_key] = None  # bytes: the plan reads it whatever is here
            self.mappings[flat_key] = (*lr_path[:-1], lr_path[-1][: -len("lr")] + name)
            self._bake.setdefault(prefix, list(groups[prefix].values()))
            self._bake[prefix].append(flat_key)

    def finish_plan(self, new_plan: LoadPlan) -> LoadPlan:
        plan = super().finish_plan(new_plan)
        reads = defaultdict(int)
        for item in plan.items:
            reads[item.dest_index.fqn] += 1
        self._pending = {prefix: sum(reads[k] for k in keys) for prefix, keys in self._bake.items()}
        self._group_of = {k: prefix for prefix, keys in self._bake.items() for k in keys}
        return plan

    def load_bytes(self, read_item: ReadItem, value) -> None:
        super().load_bytes(read_item, value)
        self._arrived(read_item.dest_index.fqn)

    def commit_tensor(self, read_item: ReadItem, tensor) -> None:
        super().commit_tensor(read_item, tensor)
        self._arrived(read_item.dest_index.fqn)  # a tensor lr

    def _arrived(self, flat_key: str) -> None:
        prefix = self._group_of.get(flat_key)
        if prefix is None:
            return
        self._pending[prefix] -= 1
        if self._pending[prefix] == 0:
            self._bake_group(self._bake[prefix])

    def _bake_group(self, flat_keys: list[str]) -> None:
        paths = {_group_key(k)[1]: self.mappings[k] for k in flat_keys}
        group = {name: get_element(self.original_state_dict, path) for name, path in paths.items()}
        baked = to_torch_state_dict({"state": {}, "param_groups": [group]})["param_groups"][0]
        for name, path in paths.items():
            if name in EXTRA_GROUP_KEYS:  # torch's template had none: leave none
                del get_element(self.original_state_dict, path[:-1])[path[-1]]
            else:
                set_element(self.original_state_dict, path, baked[name])


def _flat_groups(osd: MutableMapping[str, Any]) -> dict[str, list[str]]:
    """fqn -> its group keys, in ``flatten_optimizer_state_dict=True``'s format."""
    out: dict[str, list[str]] = defaultdict(list)
    for flat_key in osd:
        if isinstance(flat_key, str) and flat_key.startswith(_FLAT_PREFIX):
            fqn, _, name = flat_key[len(_FLAT_PREFIX) :].rpartition(".")
            out[fqn].append(name)
    return out


def drop_default_group_keys(osd: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Removes, in place, fused_mup's group keys that sit at their defaults (``lr_mult = 1``,
    ``wd_mult = 1``, ``"coupled"``, ``"round"``, ``peak_lr = None``), so that a fused_mup
    optimizer state dict of default groups has torch.optim.AdamW's keys exactly and a strict
    ``dcp.load`` reads a torch checkpoint into it. Nested (``{"state", "param_groups"}``) or
    flattened (``"param_groups.<fqn>.<key>"``) format. Returns ``osd``."""
    if isinstance(osd.get("param_groups"), list):
        for group in osd["param_groups"]:
            for name in [k for k in group if k in EXTRA_GROUP_KEYS]:
                if _is_default(name, group[name]):
                    del group[name]
        return osd
    for fqn, names in _flat_groups(osd).items():
        for name in names:
            key = f"{_FLAT_PREFIX}{fqn}.{name}"
            if name in EXTRA_GROUP_KEYS and _is_default(name, osd[key]):
                del osd[key]
    return osd


def fill_default_group_keys(osd: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The inverse of :func:`drop_default_group_keys`: adds, in place, each of fused_mup's group
    keys a group lacks, at its default. DCP's and torchtitan's flattened loaders look up every
    key of the live optimizer's groups, so call it on a loaded state dict before handing it to
    ``set_optimizer_state_dict`` or ``load_state_dict``. Returns ``osd``."""
    if isinstance(osd.get("param_groups"), list):
        for group in osd["param_groups"]:
            for name, default in EXTRA_GROUP_KEYS.items():
                group.setdefault(name, default)
        return osd
    for fqn in _flat_groups(osd):
        for name, default in EXTRA_GROUP_KEYS.items():
            osd.setdefault(f"{_FLAT_PREFIX}{fqn}.{name}", default)
    return osd
