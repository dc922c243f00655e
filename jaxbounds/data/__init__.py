"""Data utilities: data-pruning scores (:mod:`~jaxbounds.data.scores`: EL2N, GraNd)."""

from jaxbounds.data import scores

__all__ = ["scores"]
