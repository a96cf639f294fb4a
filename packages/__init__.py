"""Panformer: one shared attention core, seven domain packages, one CLI shape."""

__version__ = "0.1.0"
