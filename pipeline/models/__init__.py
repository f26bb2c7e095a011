"""Crack segmentation models: SAM (prompt-free) and its tuning-ready building blocks."""
