"""Panformer molecules: energies and forces from Cartesian coordinates (graph-free transformer, SchNet)."""
