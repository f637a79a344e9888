"""lm-evaluation-harness in process: an lm-eval `LM` over a model `xlit_jax.load` reads, so any harness task runs
on our engine without a server (needs lm-eval: `pip install -e '.[harness]'`).

    import lm_eval, xlit_jax
    from xlit_jax.evaluate.harness.lm_eval_lm import XlitLM
    lm_eval.simple_evaluate(model=XlitLM(xlit_jax.load("smollm2-135m")), tasks=["mmlu_abstract_algebra"])

or `lm_eval --model xlit --model_args pretrained=smollm2-135m ...` from a Python process that imported this
module (lm-eval's CLI does not import it). Log-likelihoods are `decode/loglik.py`'s (batched, packed, fp32:
`Model.loglikelihood`'s computation, tokenized by lm-eval's own boundary rule, which is ours); rolling
log-likelihoods are scored as the harness's disjoint windows of `max_length` tokens; generations run on the
slot engine (greedy, or sampled with `temperature` > 0), cut at the request's `until` strings.
"""

from __future__ import annotations

import lm_eval.models  # noqa: F401  lm-eval's own models (hf, local-completions, ...): it registers them
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from xlit_jax.decode.loglik import loglikelihood_ids
from xlit_jax.decode.sampling import Sampling
from xlit_jax.errors import InputError
from xlit_jax.serve.text import stop_at


# lm-eval registers its own models only while its registry is empty: they are in (the import above) before ours.
@register_model("xlit")
class XlitLM(TemplateLM):
    def __init__(self, model=None, pretrained: str | None = None, batch_size: int | str = 8, max_gen_toks: int = 256,
                 slots: int = 16, max_length: int | None = None, seed: int = 1234, **kwargs):
        super().__init__()
        if model is None:
            import xlit_jax

            model = xlit_jax.load(pretrained)
        if model.tokenizer is None:
            raise InputError(f"{model.name} has no tokenizer: lm-eval's tasks are text")
        self.model, self.tokenizer = model, model.tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_gen_toks, self.slots, self.seed = int(max_gen_toks), int(slots), int(seed)
        self.max_length = int(max_length or model.config.max_positions)

    @property
    def eot_token_id(self) -> int:
        return self.model.config.eos_token_ids[0]  # Model.loglikelihood's context for an empty one

    @property
    def tokenizer_name(self) -> str:
        return self.model.name

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens)).input_ids

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = []
        for _, context, continuation in requests:
            keep = max(1, self.max_length + 1 - len(continuation))  # left-truncated as the harness's HF backend
            pairs.append((list(context)[-keep:], list(continuation)))
        results = loglikelihood_ids(self.model.params, self.model.config, pairs, self.batch_size,
                                    attention=self.model.attention, lora=self.model.lora)
        for (key, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for i, request in enumerate(requests):
            tokens = self.tok_encode(request.args[0])
            for window in get_rolling_token_windows(token_list=tokens, prefix_token=self.prefix_token_id,
                                                    max_seq_len=self.max_length, context_len=1):
                windows.append(make_disjoint_window(window))
                owners.append(i)
        scores = loglikelihood_ids(self.model.params, self.model.config, windows, self.batch_size,
                                   attention=self.model.attention, lora=self.model.lora)
        totals = [0.0] * len(requests)
        for owner, (logp, _) in zip(owners, scores):
            totals[owner] += logp
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Grouped by (max_gen_toks, temperature): each group one run of the slot engine."""
        groups: dict[tuple[int, float, float], list[int]] = {}
        settings = []
        for i, request in enumerate(requests):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            eos = self.tokenizer.eos_token
            if eos and eos not in until:
                until.append(eos)
            new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", True) else 0.0
            top_p = float(kwargs.get("top_p", 1.0) or 1.0)
            ids = self.tok_encode(context)[-max(1, self.max_length - new):]
            settings.append((ids, until))
            groups.setdefault((new, temperature, top_p), []).append(i)
        outputs: list[str] = [""] * len(requests)
        for (new, temperature, top_p), members in groups.items():
            sampling = Sampling(temperature, top_p, self.seed) if temperature > 0 else None
            generated = self.model.generate_ids([settings[i][0] for i in members], new, slots=self.slots,
                                                sampling=sampling)
            for i, ids in zip(members, generated):
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                cut = stop_at(text, tuple(s for s in settings[i][1] if s))
                outputs[i] = text if cut is None else text[:cut]
                self.cache_hook.add_partial("generate_until", requests[i].args, outputs[i])
        return outputs
