"""Role and width multiplier of every parameter: :func:`param_roles`.

Roles come from module types, shapes against a base model, and name-pattern overrides; wrappers
(``torch.compile``, DDP, activation checkpointing) are looked through. See ``docs/presets.md``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "ROLES",
    "AmbiguousRoleError",
    "ParamInfo",
    "TieError",
    "named_params",
    "param_roles",
    "require_module",
    "unwrap_model",
]

ROLES: tuple[str, ...] = ("embedding", "hidden", "readout", "vector")

_TIED_POLICIES = ("embedding", "readout")


class TieError(ValueError):
    """A tied embedding/readout tensor without a ``tied=`` policy."""


class AmbiguousRoleError(ValueError):
    """Matrices whose role neither module types nor shapes tell (``names`` lists them)."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


def require_module(value: object, arg: str, call: str) -> None:
    """Refuse a non-module where a model is expected, naming the argument and what to pass."""
    if isinstance(value, nn.Module):
        return
    got = type(value).__name__
    if arg == "model":
        hint = (
            f"pass the model itself, e.g. {call}(model, ...): roles come from module types "
            "and parameter names, which model.parameters() does not carry"
        )
    else:
        hint = (
            "pass a smaller instance of the same architecture (it may live on the meta "
            "device); mup's base-shape dicts and .bsh files are not read"
        )
    raise TypeError(f"{call}: {arg} must be an nn.Module, got {got}; {hint}")


class ParamInfo(NamedTuple):
    """Role and width multiplier of one parameter (see :func:`param_roles`).

    Attributes:
        role: one of :data:`ROLES`.
        width_mult: the per-tensor width multiplier ``m`` (fan-in ratio for matrices).
        names: every module path under which this tensor is registered (more than one if tied).
    """

    role: str
    width_mult: float
    names: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Role classification
# --------------------------------------------------------------------------------------------


def _is_mureadout(module: nn.Module) -> bool:
    # By class name, so microsoft/mup stays an optional dependency.
    return any(c.__name__ == "MuReadout" for c in type(module).__mro__)


def _is_conv1d(module: nn.Module) -> bool:
    # HF transformers' Conv1D (GPT-2): a Linear whose weight is stored (in_features, out_features).
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def _is_matrix_layer(module: nn.Module) -> bool:
    return _is_linear(module) or isinstance(module, nn.modules.conv._ConvNd)


def _out_features(module: nn.Module) -> int:
    return module.nf if _is_conv1d(module) else module.out_features


# Attribute names wrappers put between the user's modules: torch.compile, activation
# checkpointing, FSDP1. Dropped from parameter names so that they match the base model's.
_WRAPPER_ATTRS = frozenset({"_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"})


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile``, DDP and ``DataParallel`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(
            getattr(model, "_orig_mod", None), nn.Module
        ):
            model = model._orig_mod
        else:
            return model


def _canonical(name: str) -> str:
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_ATTRS)


def named_params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``named_parameters(remove_duplicate=False)`` with wrapper attributes dropped."""
    out = []
    for n, p in model.named_parameters(remove_duplicate=False):
        if n.endswith("_flat_param"):
            raise ValueError(
                f"parameter {n!r} is an FSDP1 flat parameter, whose shape says nothing about "
                "roles: build the groups before wrapping, or shard with fully_shard (FSDP2)"
            )
        out.append((_canonical(n), p))
    return out


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Full parameter name -> (owning module, local name), tied names included."""
    out: dict[str, tuple[nn.Module, str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for local, p in mod.named_parameters(recurse=False):
            if p is not None:
                out[_canonical(f"{mod_name}.{local}" if mod_name else local)] = (mod, local)
    return out


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    # p.shape is the global shape for DTensor params (FSDP2), so presets agree before and
    # after fully_shard. Never to_local(). Conv1D weights are reported as (out, in).
    owners = _owners(model)
    out = {}
    for n, p in named_params(model):
        shape = tuple(p.shape)
        if _is_conv1d(owners[n][0]) and owners[n][1] == "weight":
            shape = (shape[1], shape[0], *shape[2:])
        out[n] = shape
    return out


class _Structure:
    """Module-type facts used when shapes alone cannot tell a role."""

    def __init__(self, model: nn.Module, owners: Mapping[str, tuple[nn.Module, str]]) -> None:
        mods = list(model.named_modules(remove_duplicate=False))
        embs = [m for _, m in mods if isinstance(m, nn.Embedding)]
        # The token table is the largest one (positional tables are smaller than a vocab).
        vocab = {max(e.num_embeddings for e in embs)} if embs else set()
        linears = [m for _, m in mods if _is_linear(m)]
        readouts = [m for m in linears if _is_mureadout(m)]
        if not readouts:
            # The last Linear onto the vocab: when the width equals the vocab size (a byte-level
            # model at d = 256), hidden d x d Linears match it too, and the head comes last.
            readouts = [m for m in linears if _out_features(m) in vocab][-1:]
        inputs: list[nn.Module] = []
        if not embs:
            # No embedding table (a plain MLP, a CNN): the module that holds the first matrix
            # reads the input if it is a Linear or a conv (not, e.g., the in_proj_weight of a
            # TransformerEncoder's attention); the last Linear is the readout.
            first = next((n for n, p in model.named_parameters() if p.ndim >= 2), None)
            owner = owners.get(_canonical(first)) if first is not None else None
            if owner is not None and owner[1] == "weight" and _is_matrix_layer(owner[0]):
                inputs = [owner[0]]
            if not readouts and linears:
                readouts = [linears[-1]]
        self.readout_ids = {id(m) for m in readouts}
        self.input_ids = {id(m) for m in inputs}

    def role(self, name: str, module: nn.Module, local: str, ndim: int) -> str | None:
        if ndim <= 1:
            return "vector"
        if isinstance(module, nn.Embedding):
            return "embedding"
        if _is_matrix_layer(module) and local == "weight":
            is_in, is_out = id(module) in self.input_ids, id(module) in self.readout_ids
            if is_in and is_out:
                return None  # a single Linear is both input and readout
            return "embedding" if is_in else "readout" if is_out else "hidden"
        return None


def _width_dims(
    names: Iterable[str],
    shapes: Mapping[str, tuple[int, ...]],
    base: Mapping[str, tuple[int, ...]],
    delta: Mapping[str, tuple[int, ...]] | None,
) -> dict[str, tuple[bool, ...]]:
    """Per name, which dims scale with width (as microsoft/mup's set_base_shapes decides)."""
    ref = base if delta is None else delta
    what = "base_model" if delta is None else "delta_model"
    missing = [n for n in names if n not in base or n not in ref]
    if missing:
        raise ValueError(f"parameters missing from base_model/delta_model: {missing}")
    out = {}
    for n in names:
        s, b, d = shapes[n], base[n], (shapes[n] if delta is None else ref[n])
        if len(b) != len(s) or len(d) != len(s):
            raise ValueError(f"parameter {n!r}: shape {s} and {what} shape {b} differ in rank")
        # Without delta: a dim is width if it differs from base. With delta: if base and
        # delta differ there (so the base width itself can be classified).
        out[n] = tuple(bi != di for bi, di in zip(b, s if delta is None else d, strict=True))
    return out


def param_roles(
    model: nn.Module,
    *,
    base_model: nn.Module | None = None,
    delta_model: nn.Module | None = None,
    width_mult: float | None = None,
    overrides: Mapping[str, str] | None = None,
    tied: str | None = None,
    default_role: str | None = None,
) -> dict[str, ParamInfo]:
    """Classify every trainable parameter of ``model`` into a role and width multiplier.

    Args:
        model: the model to classify (may hold DTensor params; global shapes are used).
        base_model: a smaller instance of the same architecture (may live on the meta device).
            A dim is a width dim if its size differs from the base's; ``m`` is the size ratio of
            the last width dim, i.e. the fan-in ratio for a matrix (microsoft/mup's
            ``infshape.width_mult()``).
        delta_model: optional, as in mup's ``set_base_shapes``: width dims are the dims where
            ``base_model`` and ``delta_model`` differ; ``m`` is still ``model / base_model``.
            Needed to classify by shape when ``model`` is the base width itself.
        width_mult: a scalar ``m`` for every parameter, instead of a base model. Roles then come
            from module types alone.
        overrides: ``{glob pattern: role}``, matched with :func:`fnmatch.fnmatchcase` against
            full parameter names; the first matching pattern wins.
        tied: policy for a tensor shared by an embedding and a readout: ``"embedding"`` or
            ``"readout"``. Without it such a tie raises.
        default_role: role for a matrix that module types and shapes cannot classify (a raw
            ``nn.Parameter``, an LSTM's or attention's packed weights, a single ``Linear``).
            None raises instead, naming every such parameter and the ``overrides`` that fix it.

    Returns:
        ``{first name: ParamInfo}`` in ``model.named_parameters()`` order.

    Raises:
        AmbiguousRoleError: (a ValueError) matrices with no role and no ``default_role``.
        ValueError: a tie without a policy, an unknown role or pattern that matches nothing,
            or inconsistent width arguments. Messages name the parameters.
        TypeError: a model, base or delta model that is not an ``nn.Module``, or a
            ``width_mult`` / ``overrides`` of the wrong type.
    """
    require_module(model, "model", "param_roles")
    for arg, value in (("base_model", base_model), ("delta_model", delta_model)):
        if value is not None:
            require_module(value, arg, "param_roles")
    if width_mult is not None:
        _check_width_mult(width_mult)
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(
            f"overrides must be a mapping {{glob pattern: role}}, e.g. "
            f"overrides={{'*.in_proj_weight': 'hidden'}}, got {type(overrides).__name__}"
        )
    if default_role is not None and default_role not in ROLES:
        raise ValueError(f"default_role must be one of {ROLES} or None, got {default_role!r}")
    if base_model is not None and width_mult is not None:
        raise ValueError("pass either base_model or width_mult, not both")
    if delta_model is not None and base_model is None:
        raise ValueError("delta_model needs base_model")
    if tied is not None and tied not in _TIED_POLICIES:
        raise ValueError(f"tied must be one of {_TIED_POLICIES} or None, got {tied!r}")
    overrides = dict(overrides or {})
    for pat, role in overrides.items():
        if role not in ROLES:
            raise ValueError(f"override {pat!r} -> {role!r}: role must be one of {ROLES}")

    model = unwrap_model(model)
    base_model = None if base_model is None else unwrap_model(base_model)
    delta_model = None if delta_model is None else unwrap_model(delta_model)
    owners = _owners(model)
    shapes = _shapes(model)
    structure = _Structure(model, owners)
    # Group all names of one tensor (ties), keep first-seen order; skip frozen params.
    by_tensor: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for n, p in named_params(model):
        if p.requires_grad:
            by_tensor.setdefault(id(p), (p, []))[1].append(n)

    wdims: dict[str, tuple[bool, ...]] | None = None
    base_shapes = _shapes(base_model) if base_model is not None else {}
    if base_model is not None:
        all_names = [n for _, ns in by_tensor.values() for n in ns]
        wdims = _width_dims(
            all_names, shapes, base_shapes, None if delta_model is None else _shapes(delta_model)
        )
        if delta_model is None and not any(any(w) for w in wdims.values()):
            wdims = None  # model is the base: nothing scales, classify by module type, m = 1

    used: set[str] = set()
    ambiguous: dict[str, str] = {}  # name -> "shape (..) in Module", for one error at the end

    def one_name(n: str) -> tuple[str, float]:
        shape = shapes[n]
        module, local = owners[n]
        if wdims is not None:
            w = wdims[n]
            b = base_shapes[n]
            last = max((i for i, x in enumerate(w) if x), default=None)
            m = 1.0 if last is None else shape[last] / b[last]
        else:
            w = None
            m = 1.0 if width_mult is None else float(width_mult)
        for pat, role in overrides.items():
            if fnmatch.fnmatchcase(n, pat):
                used.add(pat)
                return role, m
        if w is None:
            role = structure.role(n, module, local, len(shape))
        elif len(shape) <= 1:
            role = "vector"
        elif isinstance(module, nn.Embedding):
            role = "embedding"
        elif any(w[2:]):
            role = None  # a kernel / extra dim scales with width: not a matrix mup knows
        elif w[0] and w[1]:
            role = "hidden"
        elif w[1]:
            role = "readout"  # fan-in scales, fan-out fixed
        elif w[0]:
            role = "embedding"  # fan-out scales, fan-in fixed: an input layer
        else:
            role = "vector"  # no width dim
        if role is None:
            if default_role is not None:
                return default_role, m
            ambiguous[n] = f"shape {tuple(shape)} in {type(module).__name__}"
            return "hidden", m  # a placeholder: the error below is raised before returning
        return role, m

    out: dict[str, ParamInfo] = {}
    for _, names in by_tensor.values():
        per_name = [one_name(n) for n in names]
        if any(n in ambiguous for n in names):
            continue  # reported together below
        roles = {r for r, _ in per_name}
        role, m = per_name[0]
        if len(roles) > 1:
            pairs = ", ".join(f"{n!r} ({r})" for n, (r, _) in zip(names, per_name, strict=True))
            if roles == {"embedding", "readout"}:
                if tied is None:
                    raise TieError(
                        f"tied embedding/readout weight: {pairs} are one tensor. Pass "
                        f"tied='embedding' or tied='readout' to choose its role, or untie them"
                    )
                role = tied
                m = next(mm for r, mm in per_name if r == tied)
            else:
                raise ValueError(f"one tensor has conflicting roles: {pairs}; use overrides=")
        out[names[0]] = ParamInfo(role, m, tuple(names))
    if ambiguous:
        raise _ambiguous_error(ambiguous, list(shapes), shapes_known=wdims is not None)
    unused = [p for p in overrides if p not in used]
    if unused:
        raise ValueError(f"override patterns matched no parameter: {unused}")
    return out


def _check_width_mult(width_mult: object) -> None:
    if isinstance(width_mult, bool) or not isinstance(width_mult, Real):
        raise TypeError(
            f"Invalid width_mult value: {width_mult!r}; expected a number (the model's width "
            f"over the base width, e.g. width_mult=4.0), got {type(width_mult).__name__}"
        )
    if not (0.0 < width_mult < math.inf):
        raise ValueError(
            f"Invalid width_mult value: {width_mult!r}; it is the model's width over the base "
            "width, so it must be positive and finite"
        )


def _pattern(name: str, ambiguous: Mapping[str, str], all_names: list[str]) -> str:
    """``layers.3.attn.w`` -> ``layers.*.attn.w`` where that glob matches only ambiguous names."""
    glob = ".".join("*" if part.isdigit() else part for part in name.split("."))
    matched = [n for n in all_names if fnmatch.fnmatchcase(n, glob)]
    return glob if all(n in ambiguous for n in matched) else name


def _ambiguous_error(
    ambiguous: Mapping[str, str], all_names: list[str], *, shapes_known: bool
) -> AmbiguousRoleError:
    names = list(ambiguous)
    listed = ", ".join(f"{n!r} ({ambiguous[n]})" for n in names[:4])
    if len(names) > 4:
        listed += f" and {len(names) - 4} more"
    patterns = list(dict.fromkeys(_pattern(n, ambiguous, all_names) for n in names))
    example = "{" + ", ".join(f"{p!r}: 'hidden'" for p in patterns[:4]) + "}"
    how = "module types and shapes" if shapes_known else "module types"
    noun = f"{len(names)} parameter" + ("s" if len(names) > 1 else "")
    also = ", or pass base_model= (with delta_model= at the base width) so that shapes decide"
    if shapes_known:
        also = ""
    return AmbiguousRoleError(
        f"cannot tell the role of {noun} from {how}: {listed}. Name the role with "
        f"overrides={{glob pattern: role}} (roles {ROLES}), e.g. overrides={example}{also}",
        names,
    )
