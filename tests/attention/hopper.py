"""Compiling the neighbourhood kernels for sm_90 without a GPU: what the interpreter cannot check compiles."""

from __future__ import annotations

from types import ModuleType
from typing import Any

INTS = ("heads", "kv_group", "dim", "length", "n_t", "n_h", "n_w", "k_t", "k_h", "k_w", "d_t", "d_h", "d_w",
        "s_t", "s_h", "s_w", "tiles_t", "tiles_r", "tiles_c")
STRIDES = tuple(f"s{t}{a}" for t in "qkv" for a in "bhl")


def compile_neighborhood_kernels_for_hopper(kernels: ModuleType, meta: dict[str, Any]) -> None:
    """Lower a module's `_forward_kernel`, `_backward_dq_kernel` and `_backward_dkdv_kernel` (bf16 tensors, fp32
    lse/delta, the shared integer arguments) to cubins for sm_90 with the constexprs `meta`; asserts each exists."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    scalars = dict.fromkeys((*INTS, *STRIDES), "i32") | {"scale_log2": "fp32"}

    def pointers(*names: str) -> dict[str, str]:
        return {n: "*fp32" if n in ("lse_ptr", "delta_ptr") else "*bf16" for n in names}

    signatures = {
        kernels._forward_kernel: pointers("q_ptr", "k_ptr", "v_ptr", "o_ptr", "lse_ptr") | scalars,
        kernels._backward_dq_kernel: pointers("q_ptr", "k_ptr", "v_ptr", "do_ptr", "lse_ptr", "delta_ptr", "dq_ptr")
        | scalars,
        kernels._backward_dkdv_kernel: pointers(
            "q_ptr", "k_ptr", "v_ptr", "do_ptr", "lse_ptr", "delta_ptr", "dk_ptr", "dv_ptr"
        ) | scalars,
    }
    for fn, signature in signatures.items():
        # The signature in the kernel's argument order (the dicts above only name the types).
        ordered = {name: signature.get(name, "constexpr") for name in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, ordered, constexprs=meta), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], fn.__name__
