"""Sources, steps, MLflow logging, the CLI and serving."""
