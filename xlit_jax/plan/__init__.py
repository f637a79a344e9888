"""Compile-only plans: will a training (or decoding) config fit a pod, and how fast would it run?

XLA compiles for accelerators that are not attached: with JAX_PLATFORMS=cpu, libtpu (`pip install
'.[aot-tpu]'`) gives compile-only TPU slices and the CUDA plugin (`'.[aot-gpu]'`) GPU nodes (targets). We
lower the real jitted train step (training) or the decoding engine's prefill and step (decoding) on
ShapeDtypeStructs that carry their shardings, so nothing is allocated, and read the compiler's own memory
analysis per device (compiled). Without a device there is no autotuning: argument sizes are exact, temp
sizes indicative. When a training plan does not fit, fit finds the smallest change that does.
"""

from xlit_jax.plan.compiled import HEADROOM, Compiled, size
from xlit_jax.plan.decoding import DecodePlan, decode_step_bytes, plan_decoding
from xlit_jax.plan.fit import fit_suggestions, smallest_fitting_change
from xlit_jax.plan.targets import TARGETS, topology_devices
from xlit_jax.plan.training import TrainPlan, plan_training

__all__ = ["HEADROOM", "TARGETS", "Compiled", "DecodePlan", "TrainPlan", "decode_step_bytes", "fit_suggestions",
           "plan_decoding", "plan_training", "size", "smallest_fitting_change", "topology_devices"]
