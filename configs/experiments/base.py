"""Defaults shared by every training config: the paper's recipe on a model and data set given later.

Override any field from the command line: `xlit-train --config=configs/experiments/tiny_ft.py
--config.optim.lr=3e-4 --workdir=runs/x`. Fields are documented in docs/training.md.
"""

import dataclasses

from ml_collections import ConfigDict, config_dict

from xlit_jax.models.lora import LORA_ALPHA, LORA_DEFAULT_TARGETS, LORA_DROPOUT, LORA_RANK
from xlit_jax.models.presets import HUB_NAMES, get_preset
from xlit_jax.resources import shared_data
from xlit_jax.train.optim import OptimSettings


def with_model(config: ConfigDict, preset: str, **model) -> ConfigDict:
    """`config` with the model section of a preset (xlit_jax/models/presets.py): its hub name, named in the error
    when model.source is empty, and the fields given (source, remat, vocab_size)."""
    get_preset(preset)  # an unknown name fails here, listing the known ones
    config.model.update(hub_name=HUB_NAMES.get(preset, ""), **model)
    return config


def with_lora(config: ConfigDict) -> ConfigDict:
    """`config` as the paper's LoRA run: rank LORA_RANK, and a PEFT adapter exported at the end."""
    config.lora.rank = LORA_RANK
    config.train.export_peft = True
    return config


def base_config() -> ConfigDict:
    return ConfigDict({
        "model": {
            "source": "",  # HF directory, .gguf file, smollm2-135m or preset:NAME (random weights)
            "hub_name": "",  # what `source` should hold, named in the error when it is empty
            "seed": 0,  # random init of presets and of LoRA adapters
            "dtype": "auto",  # matmuls: bfloat16 on accelerators, float32 on CPU
            "param_dtype": "float32",  # master weights and optimizer state
            "remat": "dots",  # dots (save matmul outputs, recompute the rest: fastest on CPU) | none | full
            "attention": "auto",  # auto | xla | cudnn | splash (docs/attention.md)
            "vocab_size": 0,  # presets only: >0 resizes the vocabulary to fit data.tokenizer
        },
        # rank 0 is full fine-tuning; with_lora sets the paper's rank (defaults: xlit_jax/models/lora.py)
        # base_quantization: the frozen base's projections as none | int8 | nf4 | int4 (QLoRA; docs/quantization.md)
        "lora": {"rank": 0, "alpha": LORA_ALPHA, "dropout": LORA_DROPOUT, "targets": ",".join(LORA_DEFAULT_TARGETS),
                 "base_quantization": "none"},
        "data": {  # the data pipeline's settings (docs/data.md)
            "name": "",  # the data set, for the record: dolly-en, lima-en, ...
            "sources": (),  # FORMAT:PATH[,options] specs, e.g. ("lima:../shared/data/lima/lima.en.jsonl",)
            "template": "llama2",  # llama2 (the paper's) | chat (the tokenizer's own) | alpaca
            "tokenizer": "",  # for models without one (presets): a tokenizer source such as smollm2-135m
            "seq_len": 2048,
            "tokens_per_batch": 4096,  # per micro-batch (rows = tokens_per_batch // seq_len): ~4k as in the paper
            "grad_accum": 4,  # micro-batches per update
            "mixing": "none",  # none | uniform (a language drawn per micro-batch: Dolly-DT) | weights
            "weights": "",  # mixing=weights: en=2,fr=1
            "truncation": "truncate",  # truncate | drop over-long examples
            "skip_invalid": False,  # leave out (and count) bad rows instead of stopping
            "seed": 0,  # shuffling and mixing
            # held-out data for train.eval_every's eval/loss (never one of `sources`): FORMAT:PATH specs as `sources`
            "eval_sources": (),
        },
        # schedule: pasero (the released code) | inverse_sqrt (the paper's text); lr, min_lr, warmup_steps,
        # b1, b2, eps, weight_decay, clip_norm: xlit_jax/train/optim.py's OptimSettings and its defaults
        "optim": {k: v for k, v in dataclasses.asdict(OptimSettings()).items() if k != "max_steps"},
        "train": {
            "max_steps": 1000,
            "log_every": 10,
            "save_every": 200,
            "keep": 3,  # checkpoints kept
            "async_checkpoint": True,
            "seed": 0,  # dropout
            "peak_flops": 0.0,  # total peak FLOP/s for MFU; 0: from the device table (measured on CPU)
            "tensorboard": True,
            "export_hf": False,  # merged HF weights to workdir/export/hf at the end
            "export_peft": False,  # LoRA: PEFT adapter to workdir/export/peft at the end
            # Evaluation while training (docs/training.md): every N steps, at step 0 and at the end; 0 = off
            "eval_every": 0,
            "eval_batches": 4,  # micro-batches of data.eval_sources (their first epoch) for eval/loss
            # drift probes: one JSONL per language ({lang} in the path) of {"id", "prompt"}; "" = none. Default:
            # 50 OpenAssistant prompts human-translated (not the paper's evaluation set)
            "probe_prompts": shared_data("hplt_oasst_test/test_{lang}.jsonl"),
            "probe_languages": "en,fr,ru",  # fastText labels with Hunspell dictionaries
            "probe_limit": 4,  # prompts per language: the first ids that every language has
            "probe_max_prompt_tokens": 128,  # ... whose prompt (in data.template) is this short: a cheap round
            "probe_max_new_tokens": 48,
            "probe_repetition_penalty": 1.1,  # xlit-eval's default
            "stop_below": 0.0,  # > 0: stop when a probe language's language_correct stays below this ...
            "stop_rounds": 3,  # ... for this many rounds in a row (train.keep must outlive them)
            # lm-evaluation-harness tasks scored at every round (needs the harness extra): comma-separated names,
            # e.g. "xnli_fr,belebele_fra_Latn"; "" = none. Local task YAMLs: harness_include_path (a folder)
            "eval_harness": "",
            "harness_include_path": "",
            "harness_limit": 16,  # documents per task (the first ones): a cheap round
        },
        # -1: the devices left over. target: plan (--dry_run) for a compile-only pod instead of the attached
        # devices: v4-8, v5p-8, v5e-1/4/16, v6e-8, 1xh100, 8xh100, 1xa100, 8xa100, 1xl4 (xlit_jax/plan/targets.py)
        "mesh": {"data": 1, "fsdp": -1, "tensor": 1, "target": ""},
        "distributed": {
            "initialize": False,  # join a multi-process run (TPU pod, SLURM, or the fields below)
            "coordinator": "",  # host:port of process 0; empty: let JAX detect the cluster
            "num_processes": 0,
            "process_id": -1,
        },
    })


def overrides(given: dict | None = None) -> ConfigDict:
    """A study's `train` section: every field of base_config() as an unset typed placeholder, then `given`
    ({"train": {"max_steps": 20}}). `xlit-study --config.train.data.seq_len=256` can then override any field of
    the experiment, and only the fields set (not None) reach xlit-train."""

    def unset(tree: ConfigDict) -> dict:
        return {key: unset(value) if isinstance(value, ConfigDict) else config_dict.placeholder(type(value))
                for key, value in tree.items()}

    section = ConfigDict(unset(base_config()))
    section.update_from_flattened_dict({f"{prefix}.{key}": value for prefix, fields in (given or {}).items()
                                        for key, value in fields.items()})
    return section
