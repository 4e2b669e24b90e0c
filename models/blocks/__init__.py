"""The shared building blocks every family is assembled from (norms, MLPs, position encodings,
attention, decoder layers with their residual layouts). Block choices come from `ModelConfig`;
no family file defines a forward pass of its own."""
