"""The shared attention core: one API for masks, score mods, positions, variants and backends.

from shared_attention import Attention, attention, masks, score_mods, positions
from shared_attention import na1d, na2d, na3d   # NATTEN's functional interface, heads last
"""

from shared_attention import dispatch, masks, positions, score_mods, variants
from shared_attention.api import Attention
from shared_attention.attention_maps import AttentionMaps
from shared_attention.cache import KVCache, L2NormEvictionCache
from shared_attention.dispatch import explain as explain_case
from shared_attention.entropy import AttentionEntropy
from shared_attention.functional import attention, explain
from shared_attention.masks import (
    Causal,
    Chunked,
    Dense,
    Document,
    EdgeIndex,
    ForeignKey,
    KeyPadding,
    Mask,
    Neighborhood,
    SameColumn,
    SameRow,
    SameValue,
    SlidingWindow,
)
from shared_attention.merge import merge_attentions
from shared_attention.neighborhood import na1d, na2d, na3d
from shared_attention.positions import ALiBi, CoPE, LearnedAbsolute, NoPosition, RoPE, Sinusoidal
from shared_attention.quantized_cache import KVPrecision, QuantizedKVCache, quantized_caches
from shared_attention.registers import Registers, TestTimeRegisters, find_register_neurons
from shared_attention.score_mods import (
    Bias,
    Compose,
    ForgetGate,
    RelativeBias,
    ScoreMod,
    SoftCap,
    Temperature,
)
from shared_attention.sigma_reparam import SigmaReparamLinear
from shared_attention.variants import (
    Differential,
    Entmax15,
    GatedLocalGlobalAttention,
    HiLo,
    LinearAttention,
    MoBA,
    Routing,
    SharedDifferential,
    Sinks,
    Softmax,
    Sparsemax,
    Variant,
    VariantModule,
)

__all__ = [
    "ALiBi",
    "Attention",
    "AttentionEntropy",
    "AttentionMaps",
    "Bias",
    "Causal",
    "Chunked",
    "CoPE",
    "Compose",
    "Dense",
    "Differential",
    "Document",
    "EdgeIndex",
    "Entmax15",
    "ForeignKey",
    "ForgetGate",
    "GatedLocalGlobalAttention",
    "HiLo",
    "KVCache",
    "KVPrecision",
    "KeyPadding",
    "L2NormEvictionCache",
    "LearnedAbsolute",
    "LinearAttention",
    "Mask",
    "MoBA",
    "Neighborhood",
    "NoPosition",
    "QuantizedKVCache",
    "Registers",
    "RelativeBias",
    "RoPE",
    "Routing",
    "SameColumn",
    "SameRow",
    "SameValue",
    "ScoreMod",
    "SharedDifferential",
    "SigmaReparamLinear",
    "Sinks",
    "Sinusoidal",
    "SlidingWindow",
    "SoftCap",
    "Softmax",
    "Sparsemax",
    "Temperature",
    "TestTimeRegisters",
    "Variant",
    "VariantModule",
    "attention",
    "dispatch",
    "explain",
    "explain_case",
    "find_register_neurons",
    "masks",
    "merge_attentions",
    "na1d",
    "na2d",
    "na3d",
    "positions",
    "quantized_caches",
    "score_mods",
    "variants",
]
