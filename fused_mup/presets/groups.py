"""Width-aware param groups: :func:`param_groups` (one group per role and width multiplier,
carrying ``lr_mult`` / ``wd_mult``) and ``bake=True`` for any torch optimizer."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from numbers import Real
from typing import Any

from torch import nn

from fused_mup.hyperparams import effective
from fused_mup.ignored_keys import install_ignored_keys_hook
from fused_mup.presets.roles import (
    ROLES,
    AmbiguousRoleError,
    TieError,
    named_params,
    param_roles,
    require_module,
    unwrap_model,
)

__all__ = ["DEFAULT_DECAY", "PRESETS", "WEIGHT_DECAY_MODES", "param_groups"]

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

#: The ``weight_decay_mode`` values. Defined here, not in the optimizer, so that the presets
#: stay importable without the optimizer (and Triton); fused_mup.optim.validation imports it.
WEIGHT_DECAY_MODES = ("coupled", "independent")

# A torch optimizer given unbaked groups (lr_mult / wd_mult it ignores) warns on its first step.
install_ignored_keys_hook()


def _pow(m: float, e: float) -> float:
    # m ** -1 as 1 / m: baked and unbaked groups then apply lr · lr_mult, the same float.
    if e == 0:
        return 1.0
    return 1.0 / (m ** (-e)) if e < 0 else m**e


def _exponents(preset: str | Mapping[str, float]) -> tuple[str, dict[str, float]]:
    if isinstance(preset, str):
        if preset not in PRESETS:
            close = difflib.get_close_matches(preset.lower(), PRESETS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown preset {preset!r}; {hint}presets: {sorted(PRESETS)}")
        return preset, dict(PRESETS[preset])
    if not isinstance(preset, Mapping):
        raise TypeError(
            f"preset must be a preset name ({sorted(PRESETS)}) or a {{role: exponent}} table, "
            f"got {type(preset).__name__}"
        )
    if set(preset) != set(ROLES):
        raise ValueError(
            f"a custom exponent table needs exactly the roles {ROLES}, got {dict(preset)}"
        )
    for role, e in preset.items():
        _require_number(e, f"preset[{role!r}]")
    return "custom", {k: float(v) for k, v in preset.items()}


def _require_number(value: object, what: str) -> None:
    # A YAML config gives "1e-3" as a string: name the argument instead of failing later.
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"Invalid {what} value: {value!r}; expected a number, got {type(value).__name__}"
        )


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

    Any ``nn.Module`` works under ``sp`` (with the default ``decay``): a matrix whose role
    module types cannot tell (an LSTM's or attention's packed weights, a raw ``nn.Parameter``,
    a single ``Linear``) becomes ``hidden``, so every matrix decays and no vector does. Presets
    whose numbers depend on the role refuse such a matrix, naming it and the ``overrides``
    that fix it.

    Args:
        model: the model itself, an ``nn.Module`` (not ``model.parameters()``: roles come from
            module types and names). DTensor params are fine: global shapes are read.
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
        TypeError: ``model`` / ``base_model`` / ``delta_model`` not an ``nn.Module``, or a
            number given as something else (``lr="1e-3"`` from a YAML file).
    """
    require_module(model, "model", "param_groups")
    for arg, value in (("base_model", base_model), ("delta_model", delta_model)):
        if value is not None:
            require_module(value, arg, "param_groups")
    name, exps = _exponents(preset)
    for arg, value in (("lr", lr), ("weight_decay", weight_decay)):
        if value is not None:
            _require_number(value, arg)
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(
            f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {weight_decay_mode!r}"
        )
    if base_model is None and width_mult is None and any(exps.values()):
        raise ValueError(f"preset {name!r} scales with width: pass base_model= or width_mult=")
    bad = set(decay or {}) - set(ROLES)
    if bad:
        raise ValueError(f"decay has unknown roles {sorted(bad)}; roles are {ROLES}")
    for role, d in (decay or {}).items():
        _require_number(d, f"decay[{role!r}]")
    dec = {**DEFAULT_DECAY, **(decay or {})}
    if bake and (lr is None or weight_decay is None):
        raise ValueError(
            "bake=True folds the multipliers into lr and weight_decay, so pass both "
            "(e.g. param_groups(model, preset, lr=3e-3, weight_decay=0.1, bake=True))"
        )
    # Only what the caller set: unset keys inherit the optimizer's defaults, as in torch.
    base_hp = {k: v for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None}

    same = exps["embedding"] == exps["readout"] and dec["embedding"] == dec["readout"]
    # Where every matrix role gets the same numbers (sp), an unclassified matrix is "hidden":
    # decayed like any matrix, and the guess cannot change a step. Elsewhere it raises.
    agnostic = len({(exps[r], dec[r]) for r in ("embedding", "hidden", "readout")}) == 1
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
            default_role="hidden" if agnostic else None,
        )
    except AmbiguousRoleError as exc:
        lr_by_role = ", ".join(f"{r} m^{exps[r]:g}" for r in ("embedding", "hidden", "readout"))
        decay_by_role = ", ".join(f"{r} {dec[r]:g}" for r in ("embedding", "hidden", "readout"))
        raise AmbiguousRoleError(
            f"preset {name!r}: {exc}. The role sets the numbers here (lr_mult {lr_by_role}; "
            f"decay {decay_by_role}); preset 'sp' with the default decay takes any model",
            exc.names,
        ) from None
    except TieError as exc:
        m_e, m_r = exps["embedding"], exps["readout"]
        raise ValueError(
            f"{exc} Under preset {name!r} the role changes the numbers (lr_mult m^{m_e:g} as "
            f"embedding, m^{m_r:g} as readout; decay {dec['embedding']:g} vs "
            f"{dec['readout']:g}). For μP use preset 'mup' with tied='embedding' and "
            "scale_readout_(head, 1/m) (mup's MuSharedReadout); see docs/presets.md."
        ) from None
    params = dict(named_params(unwrap_model(model)))
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
        out = [_bake(g) for g in out]
    return out


def _bake(g: dict[str, Any]) -> dict[str, Any]:
    """The group as torch.optim.AdamW takes it: :func:`~fused_mup.hyperparams.effective`
    lr and weight decay, with independent decay relative to the group's lr (the schedule's
    peak, as schedulers scale it)."""
    eff = effective(g, g["lr"], peak=g["lr"])
    decays = g["weight_decay"] != 0.0 and g["wd_mult"] != 0.0
    if g["weight_decay_mode"] == "independent" and decays and eff.lr == 0.0:
        raise ValueError(f"cannot bake independent decay with lr=0 ({g['param_names']})")
    return {
        **g,
        "lr": eff.lr,
        "weight_decay": eff.torch_weight_decay,
        "lr_mult": 1.0,
        "wd_mult": 1.0,
        "weight_decay_mode": "coupled",
        "baked": True,
    }
