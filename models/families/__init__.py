"""One module per model family; each declares `ARCHITECTURES`, a tuple of `models.architecture.Architecture`."""
