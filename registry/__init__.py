"""MLflow Model Registry: registration and gated promotion. Filled in by the registry issues."""
