"""Softmax attention backends, registered under the op name "softmax"."""

from shared_attention.backends.flex import FlexBackend, flex_attention
from shared_attention.backends.neighborhood import NeighborhoodBackend
from shared_attention.backends.reference import ReferenceBackend, reference_attention
from shared_attention.backends.sdpa import SdpaBackend, sdpa_attention
from shared_attention.dispatch import register

register("softmax", ReferenceBackend())
register("softmax", SdpaBackend())
register("softmax", FlexBackend())
register("softmax", NeighborhoodBackend())

__all__ = [
    "FlexBackend",
    "NeighborhoodBackend",
    "ReferenceBackend",
    "SdpaBackend",
    "flex_attention",
    "reference_attention",
    "sdpa_attention",
]
