"""The tolerance table lives in the package (``fused_mup.tolerances``, also used by
``fused-mup check``); tests import it from here."""

from fused_mup.tolerances import FLOAT64_SLACK, TOLERANCES, assert_close, errors, rel_rms_error

__all__ = ["FLOAT64_SLACK", "TOLERANCES", "assert_close", "errors", "rel_rms_error"]
