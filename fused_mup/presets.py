"""Width-aware (μP / SP) parameter groups for :class:`fused_mup.AdamW`.

:func:`param_groups` gives every trainable parameter one *role* (``embedding``, ``hidden``,
``readout``, ``vector``) and a per-tensor width multiplier ``m``, then emits one group per
``(role, m)`` carrying ``lr_mult = m**e[role]`` and a matching ``wd_mult``. All metadata lives in
the group dicts, never on tensors, so it survives FSDP, ``torch.compile`` and checkpoint reload.

Also here: the model-side helpers full μP needs (:func:`mup_init_`, :func:`scale_readout_`,
:class:`OutputScale`, :func:`attention_scale`). Pure Python + torch; no Triton.

See ``docs/presets.md`` for the rules.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = [
    "DEFAULT_DECAY",
    "PRESETS",
    "ROLES",
    "OutputScale",
    "ParamInfo",
    "attention_scale",
    "mup_init_",
    "param_groups",
    "param_roles",
    "scale_readout_",
    "unwrap_model",
]

ROLES: tuple[str, ...] = ("embedding", "hidden", "readout", "vector")

#: LR multiplier per role as an exponent of the width multiplier m: lr_mult = m ** e.
PRESETS: dict[str, dict[str, float]] = {
    "sp": {"embedding": 0.0, "hidden": 0.0, "readout": 0.0, "vector": 0.0},
    # Full μP: the readout's 1/m lives in the forward (scale_readout_ / MuReadout).
    "mup": {"embedding": 0.0, "hidden": -1.0, "readout": 0.0, "vector": 0.0},
    # LR-only μP: no model change, so the readout's 1/m moves into its LR.
    "mup_lr": {"embedding": 0.0, "hidden": -1.0, "readout": -1.0, "vector": 0.0},
    "sp_emb": {"embedding": 1.0, "hidden": 0.0, "readout": 0.0, "vector": 0.0},
    "sp_emb_sqrt": {"embedding": 0.5, "hidden": 0.0, "readout": 0.0, "vector": 0.0},
}

#: Decay factor per role before width scaling (wd_mult = DECAY[role] * width part).
#: Vectors (biases, norm gains) are not decayed; embeddings are, like every other matrix.
DEFAULT_DECAY: dict[str, float] = {"embedding": 1.0, "hidden": 1.0, "readout": 1.0, "vector": 0.0}

_WD_MODES = ("coupled", "independent")
_TIED_POLICIES = ("embedding", "readout")


class _TieError(ValueError):
    """A tied embedding/readout tensor without a ``tied=`` policy."""


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


def _named_params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
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
    for n, p in _named_params(model):
        shape = tuple(p.shape)
        if _is_conv1d(owners[n][0]) and owners[n][1] == "weight":
            shape = (shape[1], shape[0], *shape[2:])
        out[n] = shape
    return out


class _Structure:
    """Module-type facts used when shapes alone cannot tell a role."""

    def __init__(self, model: nn.Module) -> None:
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
        if not embs and linears:
            # No embedding table (e.g. a plain MLP): first Linear reads the input, last
            # Linear is the readout, in registration order.
            inputs = [linears[0]]
            if not readouts:
                readouts = [linears[-1]]
        self.readout_ids = {id(m) for m in readouts}
        self.input_ids = {id(m) for m in inputs}

    def role(self, name: str, module: nn.Module, local: str, ndim: int) -> str | None:
        if ndim <= 1:
            return "vector"
        if isinstance(module, nn.Embedding):
            return "embedding"
        if (
            _is_linear(module) or isinstance(module, nn.modules.conv._ConvNd)
        ) and local == "weight":
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

    Returns:
        ``{first name: ParamInfo}`` in ``model.named_parameters()`` order.

    Raises:
        ValueError: an ambiguous parameter, a tie without a policy, an unknown role or pattern
            that matches nothing, or inconsistent width arguments. Messages name the parameters.
    """
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
    structure = _Structure(model)
    # Group all names of one tensor (ties), keep first-seen order; skip frozen params.
    by_tensor: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for n, p in _named_params(model):
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
            raise ValueError(
                f"cannot tell the role of parameter {n!r} (shape {tuple(shape)}, module "
                f"{type(module).__name__}); pass base_model= (with delta_model= at the base "
                f"width) or overrides={{{n!r}: <one of {ROLES}>}}"
            )
        return role, m

    out: dict[str, ParamInfo] = {}
    for _, names in by_tensor.values():
        per_name = [one_name(n) for n in names]
        roles = {r for r, _ in per_name}
        role, m = per_name[0]
        if len(roles) > 1:
            pairs = ", ".join(f"{n!r} ({r})" for n, (r, _) in zip(names, per_name, strict=True))
            if roles == {"embedding", "readout"}:
                if tied is None:
                    raise _TieError(
                        f"tied embedding/readout weight: {pairs} are one tensor. Pass "
                        f"tied='embedding' or tied='readout' to choose its role, or untie them"
                    )
                role = tied
                m = next(mm for r, mm in per_name if r == tied)
            else:
                raise ValueError(f"one tensor has conflicting roles: {pairs}; use overrides=")
        out[names[0]] = ParamInfo(role, m, tuple(names))
    unused = [p for p in overrides if p not in used]
    if unused:
        raise ValueError(f"override patterns matched no parameter: {unused}")
    return out


# --------------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------------


def _pow(m: float, e: float) -> float:
    # m ** -1 written as 1 / m so that bake reproduces MuAdamW's lr / m bit for bit.
    if e == 0:
        return 1.0
    return 1.0 / (m ** (-e)) if e < 0 else m**e


def _exponents(preset: str | Mapping[str, float]) -> tuple[str, dict[str, float]]:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; one of {sorted(PRESETS)}")
        return preset, dict(PRESETS[preset])
    table = {k: float(v) for k, v in preset.items()}
    if set(table) != set(ROLES):
        raise ValueError(f"a custom exponent table needs exactly the roles {ROLES}, got {table}")
    return "custom", table


def param_groups(
    model: nn.Module,
    preset: str | Mapping[str, float] = "mup",
    *,
    base_model: nn.Module | None = None,
    delta_model: nn.Module | None = None,
    width_mult: float | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    weight_decay_mode: str = "coupled",
    decay: Mapping[str, float] | None = None,
    overrides: Mapping[str, str] | None = None,
    tied: str | None = None,
    bake: bool = False,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Build width-aware param groups for :class:`fused_mup.AdamW`.

    Each parameter gets a role and width multiplier ``m`` (see :func:`param_roles`); one group
    is made per ``(role, m)`` with::

        lr_mult = m ** e[role]                        # e from the preset
        wd_mult = decay[role] * m ** -e[role]         # weight_decay_mode="coupled"
        wd_mult = decay[role]                         # weight_decay_mode="independent"

    Coupled decay shrinks by ``lr·lr_mult · wd·wd_mult = lr·wd·decay[role]`` per step, the same
    at every width (MuAdamW's ``weight_decay *= m`` for hidden weights). Independent decay
    shrinks by ``s_t · wd · wd_mult`` with ``s_t = lr_t / peak_lr``, also width-free.

    Args:
        model: the model (DTensor params fine: global shapes are read).
        preset: ``"sp"``, ``"mup"``, ``"mup_lr"``, ``"sp_emb"``, ``"sp_emb_sqrt"``, or a custom
            ``{role: exponent}`` table covering all of :data:`ROLES`.
        base_model: smaller instance of the same architecture (see :func:`param_roles`).
        delta_model: optional second reference instance, as in mup's ``set_base_shapes``.
        width_mult: scalar ``m`` instead of ``base_model``.
        lr: base (peak) learning rate, stored as each group's ``lr``. Left out of the groups
            when not given, so the optimizer's ``lr=`` (or its default) applies, as in torch.
        weight_decay: base weight decay, stored as each group's ``weight_decay``; likewise
            inherited from the optimizer when not given.
        weight_decay_mode: ``"coupled"`` (torch's rule) or ``"independent"``.
        decay: per-role decay factors merged over :data:`DEFAULT_DECAY` (e.g.
            ``{"vector": 1.0}`` decays everything, as MuAdamW does).
        overrides: ``{glob pattern: role}`` on parameter names.
        tied: role for a tied embedding/readout tensor (``"embedding"`` or ``"readout"``).
            Needed only where the preset treats the two roles differently (``mup_lr``,
            ``sp_emb``, ``sp_emb_sqrt``, or a ``decay`` that differs); otherwise a tie is an
            ``"embedding"``, as microsoft/mup's ``MuSharedReadout`` treats it.
        bake: fold the multipliers into plain ``lr`` / ``weight_decay`` (``lr_mult`` and
            ``wd_mult`` become 1, mode ``"coupled"``) so any torch optimizer runs them. For
            independent decay the baked ``weight_decay`` is ``wd_eff / lr_eff``, which is exact
            under torch LR schedulers too (they scale ``lr`` by ``s_t``).
        **group_options: extra keys copied into every group (e.g. ``betas``).

    Returns:
        A list of group dicts with ``params``, ``param_names``, ``lr`` and ``weight_decay``
        (only when passed), ``lr_mult``, ``wd_mult``, ``weight_decay_mode``, ``role``,
        ``width_mult``, ``preset``.

    Raises:
        ValueError: see :func:`param_roles`; also a non-``sp`` preset without ``base_model`` or
            ``width_mult``, an unknown preset / mode / decay role, ``bake=True`` without
            ``lr`` and ``weight_decay`` (the values it folds the multipliers into).
    """
    name, exps = _exponents(preset)
    if weight_decay_mode not in _WD_MODES:
        raise ValueError(f"weight_decay_mode must be one of {_WD_MODES}, got {weight_decay_mode!r}")
    if base_model is None and width_mult is None and any(exps.values()):
        raise ValueError(f"preset {name!r} scales with width: pass base_model= or width_mult=")
    bad = set(decay or {}) - set(ROLES)
    if bad:
        raise ValueError(f"decay has unknown roles {sorted(bad)}; roles are {ROLES}")
    dec = {**DEFAULT_DECAY, **(decay or {})}
    if bake and (lr is None or weight_decay is None):
        raise ValueError(
            "bake=True folds the multipliers into lr and weight_decay, so pass both "
            "(e.g. param_groups(model, preset, lr=3e-3, weight_decay=0.1, bake=True))"
        )
    # Only what the caller set: unset keys inherit the optimizer's defaults, as in torch.
    base_hp = {k: v for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None}

    same = exps["embedding"] == exps["readout"] and dec["embedding"] == dec["readout"]
    try:
        infos = param_roles(
            model,
            base_model=base_model,
            delta_model=delta_model,
            width_mult=width_mult,
            overrides=overrides,
            # Where both roles get the same numbers, a tie is the embedding: mup's
            # MuSharedReadout convention, and mup_init_ then never zeroes it.
            tied=tied or ("embedding" if same else None),
        )
    except _TieError as exc:
        m_e, m_r = exps["embedding"], exps["readout"]
        raise ValueError(
            f"{exc} Under preset {name!r} the role changes the numbers (lr_mult m^{m_e:g} as "
            f"embedding, m^{m_r:g} as readout; decay {dec['embedding']:g} vs "
            f"{dec['readout']:g}). For μP use preset 'mup' with tied='embedding' and "
            "scale_readout_(head, 1/m) (mup's MuSharedReadout); see docs/presets.md."
        ) from None
    params = dict(_named_params(unwrap_model(model)))
    groups: dict[tuple[str, float], dict[str, Any]] = {}
    for n, info in infos.items():
        key = (info.role, info.width_mult)
        if key not in groups:
            e = exps[info.role]
            lr_mult = _pow(info.width_mult, e)
            width_wd = _pow(info.width_mult, -e) if weight_decay_mode == "coupled" else 1.0
            groups[key] = {
                **group_options,
                "params": [],
                "param_names": [],
                **base_hp,
                "lr_mult": lr_mult,
                "wd_mult": dec[info.role] * width_wd,
                "weight_decay_mode": weight_decay_mode,
                "role": info.role,
                "width_mult": info.width_mult,
                "preset": name,
            }
        groups[key]["params"].append(params[n])
        groups[key]["param_names"].append(n)
        if len(info.names) > 1:  # a tied tensor: mup_init_ must know what else it is
            groups[key].setdefault("tied_names", {})[n] = list(info.names[1:])
    out = list(groups.values())
    if bake:
        out = [_bake(g, exps[g["role"]], dec[g["role"]]) for g in out]
    return out


def _bake(g: dict[str, Any], e: float, d: float) -> dict[str, Any]:
    m, lr, wd = g["width_mult"], g["lr"], g["weight_decay"]
    # Divide when e < 0 so baked mup equals MuAdamW's lr / m and wd * m bit for bit.
    lr_eff = lr / m ** (-e) if e < 0 else lr * m**e
    if g["weight_decay_mode"] == "coupled":
        wd_eff = (wd * m ** (-e) if e < 0 else wd / m**e) * d
    else:
        wd_eff = wd * d
        if wd_eff != 0.0:
            if lr_eff == 0.0:
                raise ValueError(f"cannot bake independent decay with lr=0 ({g['param_names']})")
            wd_eff /= lr_eff  # torch decays by lr_t * wd = s_t * lr_eff * wd = s_t * wd_eff
    return {
        **g,
        "lr": lr_eff,
        "weight_decay": wd_eff,
        "lr_mult": 1.0,
        "wd_mult": 1.0,
        "weight_decay_mode": "coupled",
        "baked": True,
    }


# --------------------------------------------------------------------------------------------
# Model-side helpers for full μP
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def mup_init_(
    groups: Iterable[Mapping[str, Any]],
    *,
    std: float = 0.02,
    zero_readout: bool = False,
) -> None:
    """Initialise parameters per role for full μP, in place, from :func:`param_groups` output.

    ``std`` is the base-width standard deviation. Per role: ``embedding`` ~ N(0, std²);
    ``hidden`` ~ N(0, std²/m) (variance ∝ 1/fan_in); ``readout`` ~ N(0, std²) or zeros (pair it
    with the 1/m forward multiplier of :func:`scale_readout_`); ``vector``: biases (names
    ending in ``bias``) zeroed, norm gains left as the module set them.

    Args:
        groups: groups from :func:`param_groups` (baked or not).
        std: init standard deviation at the base width.
        zero_readout: zero the readout instead (mup's ``readout_zero_init``).
    """
    for g in groups:
        role, m = g["role"], g["width_mult"]
        if role == "readout" and zero_readout and g.get("tied_names"):
            (n, others), *_ = g["tied_names"].items()
            raise ValueError(
                f"zero_readout=True would zero {n!r}, which is tied to {others}: the input "
                "embedding would be zeroed too. Build the groups with tied='embedding' (μP's "
                "choice for a shared readout), or pass zero_readout=False"
            )
        for n, p in zip(g["param_names"], g["params"], strict=True):
            if role == "embedding" or (role == "readout" and not zero_readout):
                p.normal_(0.0, std)
            elif role == "hidden":
                p.normal_(0.0, std / math.sqrt(m))
            elif role == "readout":
                p.zero_()
            elif n.endswith("bias"):
                p.zero_()


class OutputScale(nn.Module):
    """Multiply the input by a constant: ``y = x * mult`` (e.g. the μP readout's 1/m).

    Args:
        mult: the constant.
    """

    def __init__(self, mult: float) -> None:
        super().__init__()
        self.mult = float(mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mult

    def extra_repr(self) -> str:
        return f"mult={self.mult}"


def scale_readout_(readout: nn.Module, mult: float) -> torch.utils.hooks.RemovableHandle:
    """Multiply a readout module's input by ``mult`` (μP: ``1/m``) via a forward pre-hook.

    Parameter names and the state dict are unchanged, so it works on any module and a base
    model needs no matching edit. Equivalent to mup's ``MuReadout`` with ``output_mult=1``.

    Args:
        readout: the output projection (e.g. ``model.lm_head``).
        mult: the input multiplier, usually ``1 / width_mult``.

    Returns:
        The hook handle (``.remove()`` undoes it).
    """
    mult = float(mult)

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * mult, *args[1:])

    return readout.register_forward_pre_hook(hook)


def attention_scale(d_head: int, base_d_head: int | None = None) -> float:
    """μP attention logit scale: ``1/d_head`` instead of SP's ``1/sqrt(d_head)``.

    With ``base_d_head`` it is ``sqrt(base_d_head)/d_head``, equal to SP at the base width.
    Pass it as ``scale=`` to :func:`torch.nn.functional.scaled_dot_product_attention`.

    Args:
        d_head: head dimension of this model.
        base_d_head: head dimension of the base model, if any.
    """
    return (1.0 if base_d_head is None else math.sqrt(base_d_head)) / d_head
