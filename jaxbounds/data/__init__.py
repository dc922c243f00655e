"""Data utilities: data-pruning scores (EL2N, GraNd)."""
