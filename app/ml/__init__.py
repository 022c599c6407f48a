"""Pure PyTorch/numpy recommendation model: data, features, model, training, evaluation (no I/O)."""
