"""Which parameters of SAM are trained: the tuning methods of the SAC and CrackSAM studies."""
from pipeline.tuning.apply import TUNING_METHODS, apply_tuning
from pipeline.tuning.count import ParameterCount, count_parameters

__all__ = ["TUNING_METHODS", "ParameterCount", "apply_tuning", "count_parameters"]
