"""Softmax attention backends, registered under the op name "softmax"; those that also give each
query's log-sum-exp under "softmax_lse" (SDPA does not return it)."""

from shared_attention.backends.flex import FlexBackend, FlexLseBackend, flex_attention
from shared_attention.backends.neighborhood import NeighborhoodBackend, NeighborhoodLseBackend
from shared_attention.backends.reference import (
    ReferenceBackend,
    ReferenceLseBackend,
    reference_attention,
)
from shared_attention.backends.sdpa import SdpaBackend, sdpa_attention
from shared_attention.dispatch import register

register("softmax", ReferenceBackend())
register("softmax", SdpaBackend())
register("softmax", FlexBackend())
register("softmax", NeighborhoodBackend())
register("softmax_lse", ReferenceLseBackend())
register("softmax_lse", FlexLseBackend())
register("softmax_lse", NeighborhoodLseBackend())

__all__ = [
    "FlexBackend",
    "NeighborhoodBackend",
    "ReferenceBackend",
    "SdpaBackend",
    "flex_attention",
    "reference_attention",
    "sdpa_attention",
]
