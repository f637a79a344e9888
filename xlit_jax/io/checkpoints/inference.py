"""A trained model back from its workdir, for inference: one device, LoRA merged into the base."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import flax.linen as nn
import jax

from xlit_jax.errors import UserError, WeightsError
from xlit_jax.io.checkpoints.agree import restored
from xlit_jax.io.checkpoints.frozen import restore_frozen
from xlit_jax.io.checkpoints.model_info import read_config, read_lora, read_tokenizer
from xlit_jax.io.checkpoints.steps import CHECKPOINTS_DIR, Checkpoints
from xlit_jax.models.lora import adapted_shapes, merge_lora, merge_params, split_lora
from xlit_jax.models.quantize import quantize_params


def load_for_inference(path: str | os.PathLike, step: int | None = None, **config_overrides):
    """(config, params, tokenizer or None) from a training workdir, at `step` or the latest checkpoint.
    LoRA adapters are merged into the base (a quantized one dequantized): the params are a plain model's."""
    workdir = Path(path)
    # all three before the long restore
    config, lora, tokenizer = read_config(workdir), read_lora(workdir), read_tokenizer(workdir)
    checkpoints = Checkpoints(workdir, read_only=True)  # safe beside a run that is still training
    step = checkpoints.latest_step() if step is None else step
    if step is None:
        raise WeightsError(f"{workdir / CHECKPOINTS_DIR}: no checkpoint")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    base, adapters = split_lora(nn.meta.unbox(adapted_shapes(config, lora)))
    if lora is not None:  # the base as frozen/ holds it
        base = jax.eval_shape(functools.partial(quantize_params, fmt=lora.base_quantization), base)
    on_device = functools.partial(jax.tree_util.tree_map,
                                  lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device))

    def trained(target):
        return restored(lambda: checkpoints.restore(step, on_device(target)), checkpoints.directory / str(step),
                        f"checkpoint step {step}", functools.partial(checkpoints.mismatch, step))["params"]

    try:
        if lora is None:
            params = trained(base)
        else:
            params = merge_lora(merge_params(restore_frozen(workdir, on_device(base)), trained(adapters)), lora)
    except UserError as e:
        raise WeightsError(f"{workdir}: {e}; xlit-train on this workdir sets a damaged checkpoint aside and "
                           "rebuilds a damaged LoRA base") from None
    finally:
        checkpoints.close()
    return config.replace(**config_overrides), params, tokenizer
