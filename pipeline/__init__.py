"""crackops: the library under the `crackops` command and the DVC stages (data, models, tuning, training, evaluation, tracking)."""
