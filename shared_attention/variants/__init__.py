"""Attention variants: values that ``Attention(variant=...)`` builds into modules.

``GatedLocalGlobalAttention`` is a whole layer (MossFormer's gated attention unit), not a variant.
"""

from shared_attention.variants.base import Variant, VariantModule
from shared_attention.variants.differential import (
    Differential,
    DifferentialAttention,
    SharedDifferential,
    SharedDifferentialAttention,
    lambda_init_for,
)
from shared_attention.variants.gated import (
    GatedLocalGlobalAttention,
    gated_local_global_attention,
    gated_local_global_attention_reference,
)
from shared_attention.variants.hilo import HiLo, HiLoAttention, hilo_attention_reference
from shared_attention.variants.linear import LinearAttention, LinearAttentionModule
from shared_attention.variants.moba import BlockSelection, MoBA, MoBAAttention, select_blocks
from shared_attention.variants.routing import Routing, RoutingAttention, RoutingMask, route
from shared_attention.variants.sinks import AfterSinks, AfterSinksScoreMod, SinkAttention, Sinks
from shared_attention.variants.softmax import Softmax, SoftmaxAttention
from shared_attention.variants.sparse import (
    Entmax15,
    SparseAttention,
    Sparsemax,
    entmax15,
    sparse_attention,
    sparsemax,
)

__all__ = [
    "AfterSinks",
    "AfterSinksScoreMod",
    "BlockSelection",
    "Differential",
    "DifferentialAttention",
    "Entmax15",
    "GatedLocalGlobalAttention",
    "HiLo",
    "HiLoAttention",
    "LinearAttention",
    "LinearAttentionModule",
    "MoBA",
    "MoBAAttention",
    "Routing",
    "RoutingAttention",
    "RoutingMask",
    "SharedDifferential",
    "SharedDifferentialAttention",
    "SinkAttention",
    "Sinks",
    "Softmax",
    "SoftmaxAttention",
    "SparseAttention",
    "Sparsemax",
    "Variant",
    "VariantModule",
    "entmax15",
    "gated_local_global_attention",
    "gated_local_global_attention_reference",
    "hilo_attention_reference",
    "lambda_init_for",
    "route",
    "select_blocks",
    "sparse_attention",
    "sparsemax",
]
