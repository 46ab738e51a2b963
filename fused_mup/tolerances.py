"""The one tolerance table: per param dtype, for comparing optimizer trajectories.

Used by ``fused-mup check`` (:mod:`fused_mup.check`) and by the test suite (``tests/tolerances.py``
re-exports it), so what users' CI checks and what the project tests are the same numbers.

``rel`` bounds the relative RMS error ||a - b|| / ||b|| of a whole tensor (it suits low precision
better than elementwise allclose); ``abs`` bounds the largest elementwise difference.
- fp32: 1e-6 relative, as the project promises; the elementwise bound is a few ulps of fp32 at
  |x| ~ 4 (randn params), where even the float64 reference differs by rounding alone.
- bf16 / fp16: compared with torch's fp32 math rounded to the format after every step, which is
  our algorithm; the bounds allow a rare 1-ulp flip at a rounding tie (bf16 ulp at 4 is 1.6e-2).
"""

from __future__ import annotations

import torch

__all__ = ["FLOAT64_SLACK", "TOLERANCES", "assert_close", "errors", "rel_rms_error"]

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"rel": 1e-6, "abs": 2e-6},
    torch.complex64: {"rel": 1e-6, "abs": 2e-6},
    # Against torch's fp32 math with low-precision storage: a rare 1-ulp flip at a tie.
    torch.bfloat16: {"rel": 3e-3, "abs": 3.2e-2},
    torch.float16: {"rel": 5e-4, "abs": 4e-3},
    torch.float64: {"rel": 1e-12, "abs": 1e-12},
}


# Accuracy checks: our distance to a float64 run may exceed torch's by at most this factor.
FLOAT64_SLACK = 1.25


def _real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def rel_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (0 for empty tensors)."""
    a, e = _real(actual).double().cpu(), _real(expected).double().cpu()
    if e.numel() == 0:
        return 0.0
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(relative RMS error, max abs error); NaN when ``actual`` is not finite or shapes differ."""
    if actual.shape != expected.shape:
        return float("nan"), float("nan")
    if expected.numel() == 0:
        return 0.0, 0.0
    a = _real(actual).double().cpu()
    if not torch.isfinite(a).all():
        return float("nan"), float("nan")
    return rel_rms_error(actual, expected), (a - _real(expected).double().cpu()).abs().max().item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str):
    """Fails with the observed errors, the allowed ones and what was compared."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    tol = TOLERANCES[dtype]
    if expected.numel() == 0:
        return
    assert torch.isfinite(_real(actual)).all(), f"{what}: non-finite values"
    rel, worst = errors(actual, expected)
    assert rel <= tol["rel"] and worst <= tol["abs"], (
        f"{what}: relative RMS error {rel:.3g} (allowed {tol['rel']:.3g}), "
        f"max abs error {worst:.3g} (allowed {tol['abs']:.3g}) for {dtype}"
    )
