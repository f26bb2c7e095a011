"""Which parameters train: the SAM tuning methods of the SAC and CrackSAM studies, the other
families' full or head-only training, and :func:`~pipeline.tuning.build.build_model`, which applies them."""
from pipeline.tuning.apply import TUNING_METHODS, apply_tuning
from pipeline.tuning.count import ParameterCount, count_parameters

__all__ = ["TUNING_METHODS", "ParameterCount", "apply_tuning", "count_parameters"]
