"""Attention variants: values that ``Attention(variant=...)`` builds into modules.

``GatedLocalGlobalAttention`` is a whole layer (MossFormer's gated attention unit), not a variant.
"""

from shared_attention.variants.base import Variant, VariantModule
from shared_attention.variants.differential import (
    Differential,
    DifferentialAttention,
    lambda_init_for,
)
from shared_attention.variants.gated import (
    GatedLocalGlobalAttention,
    gated_local_global_attention,
    gated_local_global_attention_reference,
)
from shared_attention.variants.linear import LinearAttention, LinearAttentionModule
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
    "Differential",
    "DifferentialAttention",
    "Entmax15",
    "GatedLocalGlobalAttention",
    "LinearAttention",
    "LinearAttentionModule",
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
    "lambda_init_for",
    "sparse_attention",
    "sparsemax",
]
