"""The one tolerance table: per param dtype, for comparing trajectories.

``rel`` bounds the relative RMS error ||a - b|| / ||b|| of a whole tensor (it suits low precision
better than elementwise allclose); ``abs`` bounds the largest elementwise difference.
- fp32: 1e-6 relative, as the project promises; the elementwise bound is a few ulps of fp32 at
  |x| ~ 4 (randn params), where even the float64 reference differs by rounding alone.
- bf16 / fp16: compared with torch's fp32 math rounded to the format after every step, which is
  our algorithm; the bounds allow a rare 1-ulp flip at a rounding tie (bf16 ulp at 4 is 1.6e-2).
"""

import torch

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


def rel_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a = torch.view_as_real(actual) if actual.is_complex() else actual
    e = torch.view_as_real(expected) if expected.is_complex() else expected
    a, e = a.double().cpu(), e.double().cpu()
    if e.numel() == 0:
        return 0.0
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str):
    """Fails with the observed errors, the allowed ones and what was compared."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    tol = TOLERANCES[dtype]
    if expected.numel() == 0:
        return
    a = torch.view_as_real(actual) if actual.is_complex() else actual
    e = torch.view_as_real(expected) if expected.is_complex() else expected
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    rel = rel_rms_error(actual, expected)
    worst = (a.double().cpu() - e.double().cpu()).abs().max().item()
    assert rel <= tol["rel"] and worst <= tol["abs"], (
        f"{what}: relative RMS error {rel:.3g} (allowed {tol['rel']:.3g}), "
        f"max abs error {worst:.3g} (allowed {tol['abs']:.3g}) for {dtype}"
    )
