"""What the compiler says about one executable, per device: memory (arguments, temporaries, peak), FLOPs,
the fused attention kernels it contains, or its refusal when the program overflows the device."""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax

from xlit_jax.hardware import GiB

# The share of a device's memory a plan may fill: runtimes keep some for themselves, and temp sizes
# compiled without autotuning are estimates.
HEADROOM = 0.95


# Fused attention kernels as they appear in compiled HLO text: cuDNN's custom calls, the Pallas splash
# kernel (TPU), the Pallas GPU decode kernel (a Triton call traced under jit(gqa)); label None: the match.
ATTENTION_KERNELS = ((re.compile(r"__cudnn\$fmha\w*"), None), (re.compile(r"splash\w*"), None),
                     (re.compile(r"jit\(gqa\)[^\"]*pallas_call"), "pallas_gqa_decode"))


@dataclasses.dataclass
class Compiled:
    """What the compiler says about one executable, per device."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    peak_bytes: int
    compiler_flops: float | None  # scan bodies counted once; None where the backend does not say
    compile_s: float
    attention: str  # fused attention kernels found in the executable, or "xla"
    out_of_memory: str = ""  # the compiler's refusal: the TPU compiler rejects programs that overflow HBM

    @classmethod
    def of(cls, lowered, args) -> "Compiled":
        """Compile `lowered`, whose inputs are `args` (ShapeDtypeStructs with shardings)."""
        start = time.perf_counter()
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return cls.refused(str(e), shard_bytes(args), time.perf_counter() - start)
        seconds = time.perf_counter() - start
        mem = compiled.memory_analysis()
        args, out, alias, temp = (mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                                  mem.temp_size_in_bytes)
        peak = getattr(mem, "peak_memory_in_bytes", 0)
        if peak < max(args, temp):  # not reported (or, on XLA:CPU, without the temp buffers): the sum
            peak = args + out - alias + temp
        cost = compiled.cost_analysis()
        flops = cost.get("flops") if cost else None
        return cls(args, out, alias, temp, peak, flops, seconds, fused_attention(compiled.as_text()))

    @classmethod
    def refused(cls, message: str, argument_bytes: int, seconds: float) -> "Compiled":
        """From an out-of-memory refusal such as "the total memory required for HLO temporaries (37.92G)
        exceeds available HBM (15.75G)". Despite the words, that figure is the program's whole peak, the
        arguments included: it matches the peak the same program reports where it fits (13B LoRA: 28.28G
        on v5e against 28.05 GiB on a GPU; 13B full fine-tuning on v4-8: 67.9G against v5p-8's 68.0 GiB).
        The temporaries are what it asks beyond the (exactly known) arguments."""
        sizes = [float(n) * UNITS[u] for n, u in re.findall(r"\(([\d.]+)([KMGT])\)", message)]
        peak = max(int(sizes[0]) if sizes else 0, argument_bytes)
        first_line = message.strip().splitlines()[0]
        return cls(argument_bytes, 0, 0, peak - argument_bytes, peak, None, seconds, "-", first_line)


UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def shard_bytes(tree) -> int:
    """Bytes per device of a pytree of ShapeDtypeStructs with shardings (the largest shard of each)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def fused_attention(hlo_text: str) -> str:
    found = sorted({label or m for pattern, label in ATTENTION_KERNELS for m in pattern.findall(hlo_text)})
    return ",".join(found) or "xla"


def fits_memory(compiled: Compiled, memory_bytes: float | None) -> bool | None:
    if compiled.out_of_memory:
        return False
    return None if memory_bytes is None else compiled.peak_bytes <= HEADROOM * memory_bytes


def size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / (1 << 20):.1f} MiB"
