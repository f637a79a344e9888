"""The training loop: model and data in, checkpoints and metrics out, resumable at any checkpoint.

`train(config, workdir)` takes an ml_collections ConfigDict laid out as configs/experiments/base.py.
A rerun with the same workdir resumes from the latest checkpoint: params, optimizer state, step and the
data iterator's position, so it logs the same losses an uninterrupted run would (bitwise on CPU).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

import xlit_jax
from xlit_jax import sharding
from xlit_jax.data import pipeline
from xlit_jax.data.templates import end_of_turn_id, get_template
from xlit_jax.errors import InputError, NonFiniteError, UserError
from xlit_jax.io import checkpoints as ckpt
from xlit_jax.io.peft import save_merged_hf, save_peft_adapter
from xlit_jax.io.tokenizer import load_tokenizer
from xlit_jax.models.config import LlamaConfig, resolve_dtype
from xlit_jax.models.lora import LoraConfig, init_adapters, merge_params
from xlit_jax.models.quantize import check
from xlit_jax.train import metrics, optim, probes
from xlit_jax.train import step as step_lib


def model_overrides(cfg, platform: str | None = None) -> dict:
    """Config fields from the experiment's model section; `platform` (default: the attached devices') decides
    what dtype 'auto' means: a compile-only plan passes its target's."""
    overrides = {"dtype": resolve_dtype(cfg.model.dtype, platform), "param_dtype": cfg.model.param_dtype,
                 "remat": cfg.model.remat}
    return overrides | ({"vocab_size": cfg.model.vocab_size} if cfg.model.vocab_size else {})


def lora_config(cfg) -> LoraConfig | None:
    """The experiment's LoRA (its lora section), or None: full fine-tuning (rank 0)."""
    quantization = check(cfg.lora.base_quantization, "lora.base_quantization")
    if not cfg.lora.rank:
        if quantization != "none":
            raise InputError(f"lora.base_quantization={quantization} quantizes a LoRA run's frozen base: full "
                             "fine-tuning (lora.rank=0) trains every weight")
        return None
    targets = tuple(t.strip() for t in cfg.lora.targets.split(",") if t.strip())
    return LoraConfig(cfg.lora.rank, float(cfg.lora.alpha), cfg.lora.dropout, targets, quantization)


def load_source(cfg) -> tuple[LlamaConfig, dict, object]:
    """(config, host params with fresh adapters for the experiment's LoRA, tokenizer) from cfg.model.source;
    a model without a tokenizer (a preset) takes cfg.data.tokenizer's."""
    lora = lora_config(cfg)
    cpu = jax.local_devices(backend="cpu")[0]
    with jax.default_device(cpu):  # keep the weights in host memory until they are sharded
        model = xlit_jax.load(cfg.model.source, seed=cfg.model.seed, attention=cfg.model.attention,
                              **model_overrides(cfg))
        config, params = model.config, model.params
        if lora is not None:
            params = merge_params(params, init_adapters(config, lora, cfg.model.seed))
    tokenizer = model.tokenizer
    if tokenizer is None:
        if not cfg.data.tokenizer:
            raise InputError(f"{cfg.model.source} has no tokenizer: set data.tokenizer (e.g. smollm2-135m)")
        tokenizer = load_tokenizer(cfg.data.tokenizer)
    if len(tokenizer) > config.vocab_size:
        raise InputError(f"the tokenizer has {len(tokenizer)} tokens but {cfg.model.source} only "
                         f"{config.vocab_size} embeddings (presets: set model.vocab_size)")
    return with_end_of_turn(config, cfg.data.template, tokenizer), params, tokenizer


def with_end_of_turn(config: LlamaConfig, template: str, tokenizer) -> LlamaConfig:
    """`config` whose EOS ids include the token that closes an answer in `template`: the tuned model ends its
    turns with it (a base's EOS is its end of text, while Qwen2.5's template closes turns with <|im_end|> and
    Llama 3's with <|eot_id|>), and decoding from the run, its workdir or its export stops there."""
    end = end_of_turn_id(get_template(template, tokenizer), tokenizer)
    if end is None or end in config.eos_token_ids:
        return config
    logging.info("EOS ids %s and the template's end of turn %r (id %d)", config.eos_token_ids,
                 tokenizer.convert_ids_to_tokens(end), end)
    return config.replace(eos_token_ids=(*config.eos_token_ids, end))


def source_of(cfg) -> dict:
    """What load_source loads the weights from: recorded in the workdir, checked before a rebuild."""
    return {"source": cfg.model.source, "seed": cfg.model.seed}


def check_settings(cfg) -> None:
    """The data and optimizer settings refused without reading anything: train() checks them first, xlit-study
    for every training cell before its first stage."""
    d = cfg.data
    pipeline.check_settings(d.template, d.mixing, d.truncation, d.weights)
    pipeline.batch_size_for(d.tokens_per_batch, d.seq_len)
    optim.OptimSettings.from_config(cfg)


def load_data(cfg) -> tuple[list, dict]:
    """The records of data.sources (and a count per source), read, and bad files refused, before the weights load."""
    return pipeline.load_mix(list(cfg.data.sources), cfg.data.seed, cfg.data.skip_invalid)


def make_batches(cfg, tokenizer, mix: tuple[list, dict]):
    """The one link to the data pipeline: an iterator of [B, L] numpy batches with state()/restore(), from
    load_data's records."""
    d = cfg.data
    weights = pipeline.parse_weights(d.weights) if d.weights else None
    batches, report = pipeline.build(mix, tokenizer, d.template, d.seq_len, d.tokens_per_batch, d.seed,
                                     d.mixing, weights, d.truncation)
    logging.info("data: %s", report)
    return batches


def next_batch(data, k: int) -> dict[str, np.ndarray]:
    """k micro-batches stacked on a leading axis, only the keys the step takes."""
    micro = [next(data) for _ in range(k)]
    return {key: np.stack([m[key] for m in micro]) for key in pipeline.BATCH_KEYS}


def mesh_for(cfg, devices=None):
    """The config's mesh over `devices` (default: all); its batch shards must divide the rows of a micro-batch."""
    rows = pipeline.batch_size_for(cfg.data.tokens_per_batch, cfg.data.seq_len)
    return sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices, rows=rows)


class _Run:
    """What the loop's phases share: the config, mesh, optimizer settings and checkpoints."""

    def __init__(self, cfg, workdir: Path):
        self.cfg, self.workdir = cfg, workdir
        self.mesh = mesh_for(cfg)
        self.settings = optim.OptimSettings.from_config(cfg)
        self.checkpoints = ckpt.Checkpoints(workdir, cfg.train.keep, cfg.train.async_checkpoint)

    def start(self):
        """(train step, state, tokenizer, data iterator): fresh from the source, or resumed."""
        latest = self.checkpoints.latest_step()
        mix = load_data(self.cfg)
        if latest is None:
            config, params, tokenizer = load_source(self.cfg)
            data = make_batches(self.cfg, tokenizer, mix)  # bad data stops the run before anything is compiled or saved
            lora = lora_config(self.cfg)
            train_step = self._build(config, lora)
            state = train_step.init(params)
            if jax.process_index() == 0:
                ckpt.save_model_info(self.workdir, config, tokenizer, source_of(self.cfg), lora)
            if lora is not None and not ckpt.has_frozen(self.workdir):
                ckpt.save_frozen(self.workdir, state.frozen)
            return train_step, state, tokenizer, data
        # the run's own model and LoRA: config changes to them do not apply (the attention kernel, the
        # machine's choice, is the config's)
        config, lora = ckpt.read_config(self.workdir), ckpt.read_lora(self.workdir)
        tokenizer = ckpt.read_tokenizer(self.workdir)
        train_step = self._build(config, lora)
        state, data_state, step = self._restore(train_step)
        data = make_batches(self.cfg, tokenizer, mix)
        data.restore(data_state)
        logging.info("resumed from step %d", step)
        return train_step, state, tokenizer, data

    def _build(self, config: LlamaConfig, lora: LoraConfig | None) -> step_lib.TrainStep:
        return step_lib.build(config, self.settings, self.mesh, self.cfg.train.seed, lora, self.cfg.model.attention)

    def _restore(self, train_step: step_lib.TrainStep):
        """The newest checkpoint that restores (unreadable newer ones are set aside, io/checkpoints/steps.py)."""
        abstract = train_step.abstract
        step, restored = self.checkpoints.restore_latest(abstract.params, abstract.opt_state)
        frozen = self._frozen(train_step) if abstract.frozen else {}
        step_array = sharding.host_to_mesh(np.asarray(step, np.int32), train_step.shardings.step)
        state = step_lib.TrainState(step_array, restored["params"], frozen, restored["opt_state"])
        return state, restored["data"], step

    def _frozen(self, train_step: step_lib.TrainStep):
        """The LoRA base from frozen/; when that cannot be restored, rebuilt from the model source (training
        never changes it) and saved again, the damaged copy set aside."""
        try:
            return ckpt.restore_frozen(self.workdir, train_step.abstract.frozen)
        except UserError as e:
            damage = str(e)
        recorded, source = ckpt.read_source(self.workdir), source_of(self.cfg)
        if recorded != source:
            started = recorded or "a source it did not record"
            raise UserError(f"{damage}, and it cannot be rebuilt: the run started from {started} "
                            f"({ckpt.MODEL_DIR}/{ckpt.SOURCE_FILE}), this config names {source}")
        config, params, _ = load_source(self.cfg)
        config = config.replace(eos_token_ids=train_step.config.eos_token_ids)  # they do not touch the weights
        if (config, lora_config(self.cfg)) != (train_step.config, train_step.lora):
            raise UserError(f"{damage}, and it cannot be rebuilt: {self.cfg.model.source} with this config is "
                            f"not the run's model ({ckpt.CONFIG_FILE}, {ckpt.LORA_FILE}): rerun with the settings "
                            "that started it")
        frozen = train_step.init(params).frozen
        aside = ckpt.replace_frozen(self.workdir, frozen)
        logging.warning("%s: rebuilt it from %s and saved it again; the damaged copy is in %s", damage,
                        self.cfg.model.source, aside)
        return frozen


class _Monitor:
    """Looks at each step's metrics one step late, so fetching them overlaps the next step: stops on a
    non-finite loss (before anything is saved after it), logs every log_every steps and the last one."""

    def __init__(self, run: _Run, train_step: step_lib.TrainStep, writer: metrics.MetricsWriter, start: int):
        cfg = run.cfg
        self.run, self.writer, self.log_every, self.max_steps = run, writer, cfg.train.log_every, cfg.train.max_steps
        self.tokens_per_step = (cfg.data.grad_accum * cfg.data.seq_len
                                * pipeline.batch_size_for(cfg.data.tokens_per_batch, cfg.data.seq_len))
        self.flops_per_token = metrics.train_flops_per_token(train_step.config, cfg.data.seq_len, train_step.lora)
        self.peak, source = metrics.all_devices_peak_flops(cfg.train.peak_flops)
        logging.info("peak %.3g FLOP/s (%s)", self.peak, source)
        self.pending, self.last_row, self.clock = None, {}, (start, time.perf_counter())

    def pause(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation round) out of the next throughput."""
        self.clock = (self.clock[0], self.clock[1] + seconds)

    def push(self, step: int, step_metrics: dict) -> None:
        self.flush()
        self.pending = (step, step_metrics)

    def flush(self) -> None:
        if self.pending is not None:
            self._check(*self.pending)
            self.pending = None

    def _check(self, step: int, step_metrics: dict) -> None:
        values = {key: float(v) for key, v in jax.device_get(step_metrics).items()}
        if not values.pop("finite"):
            self.run.checkpoints.wait()
            last = self.run.checkpoints.latest_step()
            saved = ("no checkpoint was saved yet" if last is None else
                     f"the last good checkpoint is step {last} in {self.run.workdir / ckpt.CHECKPOINTS_DIR}")
            raise NonFiniteError(f"training stopped at step {step}: non-finite loss {values['loss']} "
                                 f"(grad norm {values['grad_norm']}); {saved}")
        self.writer.advance()
        if step % self.log_every and step != self.max_steps:
            return
        now = time.perf_counter()  # the first interval includes compilation
        tokens_per_s = (step - self.clock[0]) * self.tokens_per_step / (now - self.clock[1])
        self.last_row = {"step": step, **values, "tokens_per_s": tokens_per_s,
                         "mfu": self.flops_per_token * tokens_per_s / self.peak}
        self.writer.write(self.last_row)
        self.clock = (step, now)


def train(cfg, workdir: str, harness=None) -> dict:
    """Run (or resume) training to cfg.train.max_steps, evaluating every cfg.train.eval_every steps; returns the
    last logged metrics row (with "stopped", the message, when the stop rule ended the run). `harness` scores
    cfg.train.eval_harness's lm-eval tasks in each round: xlit_jax.evaluate.harness.training.harness_round(cfg),
    made by the caller (the evaluation layers sit above this one)."""
    workdir = Path(workdir)
    check_settings(cfg)
    tools = probes.check(cfg, harness)  # bad evaluation settings fail before any weights are read
    run = _Run(cfg, workdir)
    train_step, state, tokenizer, data = run.start()
    start, t = int(jax.device_get(state.step)), cfg.train
    logging.info("model %s, %d trainable params, mesh %s", cfg.model.source,
                 sum(x.size for x in jax.tree_util.tree_leaves(state.params)), dict(run.mesh.shape))
    writer = metrics.MetricsWriter(workdir, start, t.max_steps, t.tensorboard)
    monitor = _Monitor(run, train_step, writer, start)
    evaluator = None if tools is None else probes.Evaluator(cfg, tools, train_step, tokenizer, writer, workdir, start,
                                                            harness)

    def evaluate(step: int, state) -> str | None:
        """A round when one is due at `step` (step 0 gives each curve its start); the stop rule's message."""
        if not (evaluator and evaluator.due(step)):
            return None
        monitor.flush()  # a non-finite step stops before it is evaluated
        began = time.perf_counter()
        fell = evaluator.round(step, state)
        monitor.pause(time.perf_counter() - began)
        return fell and _stop_message(run, step, t, *fell)

    with sharding.activate(run.mesh):
        stopped, step = evaluate(start, state), start
        while not stopped and step < t.max_steps:
            step += 1
            batch = sharding.global_batch(next_batch(data, cfg.data.grad_accum), train_step.batch_sharding)
            state, step_metrics = train_step.step(state, batch)
            monitor.push(step, step_metrics)
            stopped = evaluate(step, state)  # a stopped run saves nothing after its fall
            if not stopped and (step % t.save_every == 0 or step == t.max_steps):
                monitor.flush()
                run.checkpoints.save(step, state.params, state.opt_state, data.state())
    run.checkpoints.wait()
    if stopped:
        logging.warning("%s", stopped)
    elif t.export_hf or t.export_peft:
        export(cfg, workdir, train_step, state, tokenizer)
    run.checkpoints.close()
    writer.close()
    return monitor.last_row | ({"stopped": stopped} if stopped else {})


def _stop_message(run: _Run, step: int, t, language: str, fell_at: int, before: int | None) -> str:
    """Why the stop rule ended the run, naming the last checkpoint before the fall."""
    run.checkpoints.wait()
    saved = [int(p.name) for p in (run.workdir / ckpt.CHECKPOINTS_DIR).glob("*") if p.name.isdigit()]
    kept = max((s for s in saved if before is not None and s <= before), default=None)
    where = (f"the checkpoint before the fall is step {kept} in {run.workdir / ckpt.CHECKPOINTS_DIR}"
             if kept is not None else "no checkpoint was saved before the fall")
    return (f"stopped at step {step}: probe language correctness in {language} below train.stop_below="
            f"{t.stop_below} for {t.stop_rounds} rounds since step {fell_at}; {where}")


def export(cfg, workdir: Path, train_step: step_lib.TrainStep, state, tokenizer) -> None:
    """Merged HF weights to workdir/export/hf and, for LoRA, the PEFT adapter to workdir/export/peft."""
    params = multihost_utils.process_allgather(state.full_params(), tiled=True)  # every process takes part
    if jax.process_index() != 0:
        return
    config, lora = train_step.config, train_step.lora
    # the run's own exports: a rerun replaces them
    if cfg.train.export_hf:
        save_merged_hf(config, lora, params, workdir / "export" / "hf", tokenizer, overwrite=True)
    if cfg.train.export_peft and lora is not None:
        save_peft_adapter(config, lora, params, workdir / "export" / "peft", cfg.model.hub_name or cfg.model.source,
                          overwrite=True)

