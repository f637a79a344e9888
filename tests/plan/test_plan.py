"""Compile-only plans: a small config compiled for a TPU slice and a GPU node (when their compile stacks are
installed: `pip install -e '.[aot-tpu,aot-gpu]'`, `make test-aot`), and `xlit-train --dry_run` on 8 CPU devices.

Each compile runs in a subprocess with JAX_PLATFORMS=cpu, as compile-only targets need.
"""

import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from flax import traverse_util

from xlit_jax.models.llama import param_shapes
from xlit_jax.models.lora import LoraConfig
from xlit_jax.models.presets import get_preset
from xlit_jax.train.metrics import train_flops_per_token

from support import REPO


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install -e '.[aot-tpu]')")
needs_cuda_plugin = pytest.mark.skipif(not installed("jax-cuda12-pjrt"),
                                       reason="jax-cuda12-plugin/pjrt not installed (pip install -e '.[aot-gpu]')")

# A 6.3M-parameter shape whose dims split evenly into TPU tiles over 4 devices, and one whose embeddings
# alone (2.1B params, 25 GiB of weights and Adam state) cannot fit one 16 GiB v5e chip.
PLAN = r"""
import json, sys
from configs.experiments import tiny_ft
from configs.experiments.base import with_lora
from xlit_jax import plan
from xlit_jax.models import presets
from xlit_jax.models.config import LlamaConfig

SHAPES = {"small": LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_layers=2,
                               num_heads=4, num_kv_heads=4),
          "huge": LlamaConfig(vocab_size=262144, hidden_size=4096, intermediate_size=1024, num_layers=1,
                              num_heads=32, num_kv_heads=32)}
out = {}
for case in sys.argv[1:]:
    shape, target, tokens, *quantized = case.split(":")  # a 4th field: LoRA on a base quantized so
    presets.PRESETS[f"plan-{shape}"] = SHAPES[shape]
    cfg = with_lora(tiny_ft.get_config()) if quantized else tiny_ft.get_config()
    if quantized:
        cfg.lora.base_quantization = quantized[0]
    cfg.model.update(source=f"preset:plan-{shape}", vocab_size=0)
    cfg.data.update(tokens_per_batch=int(tokens))
    result = plan.plan_training(cfg, plan.topology_devices(target), target)
    c = result.compiled
    out[case] = {"params": SHAPES[shape].num_params(), "devices": result.devices, "argument_bytes": c.argument_bytes,
                 "peak_bytes": c.peak_bytes,
                 "batch_bytes": 5 * 4 * cfg.data.grad_accum * int(tokens), "fits": result.fits,
                 "attention": c.attention, "text": result.describe(0.4, 1000)}
print(json.dumps(out))
"""


def python(code: str, *args: str, devices: int = 1) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python on the CPU platform (with `devices` CPU devices)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def plan_cases(*cases: str) -> dict:
    done = python(PLAN, *cases)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_arguments_are_sharded_state(result: dict) -> None:
    """fp32 params + Adam's two moments, split over every device, plus the batch shard: to 3% (TPU tiles pad
    the small norm vectors)."""
    expected = (3 * 4 * result["params"] + result["batch_bytes"]) / result["devices"]
    assert result["argument_bytes"] == pytest.approx(expected, rel=0.03)


@needs_libtpu
def test_tpu_plan_shards_the_state_and_reports_what_does_not_fit():
    out = plan_cases("small:v5e-4:1024", "huge:v5e-1:256")
    small, huge = out["small:v5e-4:1024"], out["huge:v5e-1:256"]
    check_arguments_are_sharded_state(small)
    assert small["fits"] is True and "splash" in small["attention"]  # attention=auto takes the fused kernel
    assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1}" in small["text"] and ": fits" in small["text"]
    assert huge["fits"] is False and huge["argument_bytes"] > 16 * 2**30
    assert "does NOT fit" in huge["text"]


@needs_libtpu
@needs_cuda_plugin
def test_a_tpu_refusal_names_the_whole_peak_as_a_gpu_compiles_it():
    """The TPU compiler refuses the huge shape on one v5e chip, naming the "memory required for HLO
    temporaries": that is the step's whole peak, its arguments (25 GiB of weights and Adam state) included,
    as the GPU compiler's peak for the same step on one L4 (no fit either) shows, to 10%."""
    out = plan_cases("huge:v5e-1:256", "huge:1xl4:256")
    tpu, gpu = out["huge:v5e-1:256"], out["huge:1xl4:256"]
    assert tpu["fits"] is False and gpu["fits"] is False and "RESOURCE_EXHAUSTED" in tpu["text"]
    assert tpu["argument_bytes"] == pytest.approx(gpu["argument_bytes"], rel=0.01)
    assert tpu["peak_bytes"] == pytest.approx(gpu["peak_bytes"], rel=0.1)


@needs_cuda_plugin
def test_gpu_plan_shards_the_state_over_8_h100():
    small = plan_cases("small:8xh100:2048")["small:8xh100:2048"]
    check_arguments_are_sharded_state(small)
    assert small["fits"] is True and "8 x NVIDIA H100 80GB HBM3" in small["text"]
    assert "__cudnn$fmha" in small["attention"]  # attention=auto takes cuDNN's fused kernel


@needs_cuda_plugin
def test_a_quantized_lora_base_shrinks_the_arguments_by_its_kernels_bytes_on_a_24gb_gpu():
    """LoRA on the small shape on one L4 (1xl4), its base in bf16 and in nf4: the compiled step's arguments
    differ by exactly the projections' bytes, 2 a weight against half a byte plus a bf16 scale per 64."""
    out = plan_cases("small:1xl4:1024:none", "small:1xl4:1024:nf4")
    bf16, nf4 = out["small:1xl4:1024:none"], out["small:1xl4:1024:nf4"]
    kernels = 2 * (4 * 512 * 512 + 3 * 512 * 1024)  # q, k, v, o and gate, up, down of the 2 layers
    assert bf16["argument_bytes"] - nf4["argument_bytes"] == kernels * 2 - kernels // 2 - kernels // 64 * 2
    assert "plan: plan-small lora-nf4 on 1xl4 (1 x NVIDIA L4)" in nf4["text"] and "of 22.5 GiB: fits" in nf4["text"]
    assert "__cudnn$fmha" in nf4["attention"]  # Ada (compute capability 8.9) takes cuDNN's fused kernel


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    """xlit-train --dry_run on 8 CPU devices: the plan for the attached devices, no workdir, status 0."""
    workdir = tmp_path / "run"
    code = (f"import sys; sys.argv = ['xlit-train', '--config=configs/experiments/tiny_lora.py', '--dry_run', "
            f"'--workdir={workdir}', '--config.data.tokens_per_batch=2048']\n"
            "from launch.train import run\nrun()")
    done = python(code, devices=8)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plan: tiny lora on 8 attached cpu devices" in done.stdout
    assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in done.stdout
    assert "2 micro-batches x 8 rows x 256 tokens" in done.stdout
    assert "FLOPs per step" in done.stdout and "step time at 40% MFU" in done.stdout
    assert not workdir.exists()


def test_dry_run_names_a_bad_target_in_one_line():
    code = ("import sys; sys.argv = ['xlit-train', '--config=configs/experiments/tiny_ft.py', '--dry_run', "
            "'--config.mesh.target=v9-8']\nfrom launch.train import run\nrun()")
    done = python(code)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("xlit-train: unknown target 'v9-8'; known: v4-8")


def test_accelerator_perf_refuses_the_cpu_in_one_line():
    done = python("import runpy, sys; sys.argv = ['accelerator']; "
                  "runpy.run_module('xlit_jax.perf.accelerator', run_name='__main__')")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("xlit_jax.perf.accelerator: no GPU or TPU attached")


def test_fit_suggestions_go_from_remat_to_smaller_micro_batches_keeping_the_tokens_per_update():
    from configs.experiments import paper
    from xlit_jax.plan import fit_suggestions

    cfg = paper.get_config("llama2-7b,lima-en,ft,1e-5")  # 4 micro-batches x 2 rows of 2048
    with cfg.unlocked():
        cfg.model.remat = "none"
        cfg.mesh.data = 2
    flags = [flag for flag, _ in fit_suggestions(cfg)]
    assert flags == ["--config.model.remat=dots", "--config.model.remat=full",
                     "--config.data.tokens_per_batch=2048 --config.data.grad_accum=8",
                     "--config.mesh.data=1 --config.mesh.fsdp=-1"]


def test_load_config_reads_the_shapes_without_the_weights():
    from xlit_jax.loader import load_config
    from xlit_jax.models.presets import get_preset

    assert load_config("preset:llama2-13b", dtype="bfloat16") == get_preset("llama2-13b").replace(dtype="bfloat16")
    smollm2 = load_config("smollm2-135m")  # the GGUF header only
    assert (smollm2.num_layers, smollm2.num_heads, smollm2.num_kv_heads, smollm2.tie_embeddings) == (30, 9, 3, True)


def test_decoding_plan_compiles_the_engines_programs_each_holding_its_state():
    """plan_decoding on this CPU: the engine's prefill and decoding call, each with the weights and the
    engine's state (the KV cache for prompt + new tokens in every slot) as arguments; the peak is the
    larger program's."""
    import jax

    from xlit_jax.plan import plan_decoding

    result = plan_decoding("preset:tiny", jax.devices()[0], 4, 64, 32)
    for compiled in (result.prefill, result.step):
        assert compiled.argument_bytes >= result.weight_bytes + result.cache_bytes and compiled.attention == "xla"
    row = result.row()
    assert row["peak_gib"] * 2**30 == max(result.prefill.peak_bytes, result.step.peak_bytes)
    assert (row["batch"], row["attention"]) == (4, "xla") and row["compile_s"] > 0


# Parameters of each hub name (models/presets.py: HUB_NAMES), as the Hugging Face hub counts them from the
# safetensors (for the sharded ones, model.safetensors.index.json's total_size / 2 bytes of bf16). Qwen's model
# cards agree to their rounding: 0.49B (0.36B without embeddings) and 7.61B (6.53B).
PUBLISHED_PARAMS = {"llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320, "llama3.1-8b": 8_030_261_248,
                    "llama3.2-1b": 1_235_814_400, "llama3.2-3b": 3_212_749_824, "qwen2.5-0.5b": 494_032_768,
                    "qwen2.5-7b": 7_615_616_512, "mistral-7b": 7_241_732_096}


@pytest.mark.parametrize("name", PUBLISHED_PARAMS)
def test_model_flops_count_each_familys_matmul_weights(name):
    """The plans' model FLOPs (6 x matmul weights + attention; LoRA without the frozen weights' gradients)
    count the model's own kernels: k and v at the KV heads' width (GQA), the LM head once whether or not it
    is tied to the embedding, and not Qwen2's q/k/v biases or the norms."""
    config = get_preset(name)
    shapes = traverse_util.flatten_dict(param_shapes(config))
    assert sum(math.prod(x.shape) for x in shapes.values()) == config.num_params() == PUBLISHED_PARAMS[name]
    kernels = sum(math.prod(x.shape) for path, x in shapes.items() if path[-1] == "kernel")
    matmuls = kernels + (config.vocab_size * config.hidden_size if config.tie_embeddings else 0)
    attention = 12 * config.num_layers * config.num_heads * config.head_dim * 2048
    assert train_flops_per_token(config, 2048) == 6 * matmuls + attention
    assert train_flops_per_token(config, 2048, LoraConfig()) == 4 * matmuls + attention
