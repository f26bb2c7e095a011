"""Strings that `register` and `promote` both write into a model version, kept apart from either
so the `register` stage does not import (and depend on) the promotion code."""
from __future__ import annotations

# Set last by `crackops register`: a version without it was never fully registered (a killed
# register left it half-done), so `crackops promote` refuses it until register is rerun.
REGISTERED_TAG = "crackops.registered"
# Each promotion decision adds a paragraph under this heading to the version's description;
# a rerun of register keeps them.
PROMOTION_HEADING = "#### Promotion"
