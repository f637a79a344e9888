"""Chat templates: a conversation becomes text pieces, each marked as training target or not.

Templates (`get_template(name, tokenizer)`):
  llama2  the paper's: `<s>[INST] {user} [/INST] {assistant} </s>` per exchange; a system turn goes into
          the first user turn as `<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}`. The space after [/INST] opens
          the assistant piece, so a generation prompt ends with "[/INST]", as in LLaMA-2-chat's own
          inference code, and the model emits that space with the answer's first token.
  chat    the tokenizer's own chat template (ChatML for SmolLM2 and Qwen2.5, Llama 3's headers), rendered
          one turn at a time to find where each answer starts and ends (at the first EOS or other special
          token after it: <|im_end|>, <|eot_id|>); it must render a conversation's prefix as a prefix of
          the whole (every common template does).
  alpaca  the Stanford Alpaca prompt: a header (or the system turn), then per exchange
          "### Instruction:\\n{user}\\n\\n### Response:\\n{assistant}</s>"; a BOS first when the tokenizer
          adds one by default (LLaMA).

Targets: the assistant's text and the end-of-turn token that closes it (`</s>`, `<|im_end|>`, `<|eot_id|>`); in `chat`
whatever the template writes after that token (ChatML's newline) belongs to the next prompt. Everything
else (system, user, role headers) is context only. A model tuned on a template learns to end its answers with
that token (`end_of_turn_id`), so the run adds it to the model's EOS ids (train/loop.py).

Tokenization is piece by piece (adjacent pieces of the same kind are joined first): the tokens of a
generation prompt are then exactly the first tokens of the training sequence that continues it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from xlit_jax.data.records import Turn
from xlit_jax.errors import InputError

TEMPLATES = ("llama2", "chat", "alpaca")
ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")


@dataclasses.dataclass(frozen=True)
class Piece:
    text: str
    target: bool


class Llama2Template:
    def __init__(self, tokenizer):
        self.bos, self.eos = tokenizer.bos_token or "", tokenizer.eos_token
        self.end_token = self.eos

    def pieces(self, turns: Sequence[Turn]) -> list[Piece]:
        system, turns = _split_system(turns)
        out = []
        for turn in turns:
            if turn.role == "user":
                text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{turn.content}" if system is not None else turn.content
                system = None
                out.append(Piece(f"{self.bos}[INST] {text} [/INST]", False))
            else:
                out.append(Piece(f" {turn.content} {self.eos}", True))
        return out


class AlpacaTemplate:
    def __init__(self, tokenizer):
        self.eos = self.end_token = tokenizer.eos_token
        adds_bos = tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
        self.bos = tokenizer.bos_token if adds_bos else ""

    def pieces(self, turns: Sequence[Turn]) -> list[Piece]:
        system, turns = _split_system(turns)
        out = [Piece(self.bos + (ALPACA_HEADER if system is None else system), False)]
        for turn in turns:
            if turn.role == "user":
                out.append(Piece(f"\n\n### Instruction:\n{turn.content}\n\n### Response:\n", False))
            else:
                out.append(Piece(turn.content + self.eos, True))
        return out


class TokenizerChatTemplate:
    """The tokenizer's `chat_template`; answers are found by rendering growing prefixes of the conversation."""

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat_template; use llama2 or alpaca")
        self.tokenizer = tokenizer
        # what closes an answer: the EOS, or another special token of the template (a base model's EOS is
        # its end of text, while its template closes turns with <|im_end|> (Qwen2.5) or <|eot_id|> (Llama 3))
        added = getattr(tokenizer, "added_tokens_decoder", {}).values()
        self.ends = tuple(dict.fromkeys([tokenizer.eos_token, *(t.content for t in added if t.special)]))
        exchange = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        closing = self._closing(_after(self._render(exchange[:1], True), self._render(exchange, False)))
        self.end_token = closing and closing[1]

    def _closing(self, answer: str) -> tuple[int, str] | None:
        """(where, which) of the first token in a rendered answer that closes it, or None."""
        return min(((i, end) for end in self.ends if end and (i := answer.find(end)) >= 0), default=None)

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def pieces(self, turns: Sequence[Turn]) -> list[Piece]:
        messages = [{"role": t.role, "content": t.content} for t in turns]
        out, done = [], ""
        for i, turn in enumerate(turns):
            if turn.role != "assistant":
                continue
            head = self._render(messages[:i], True)
            full = self._render(messages[:i + 1], False)
            out.append(Piece(_after(done, head), False))
            answer = _after(head, full)
            cut = self._closing(answer)
            cut = len(answer) if cut is None else cut[0] + len(cut[1])
            out += [Piece(answer[:cut], True), Piece(answer[cut:], False)]
            done = full
        if turns[-1].role != "assistant":
            out.append(Piece(_after(done, self._render(messages, True)), False))
        return [p for p in out if p.text]


def _after(prefix: str, text: str) -> str:
    if not text.startswith(prefix):
        raise ValueError("the chat template renders a conversation's first turns differently from the whole "
                         "conversation, so answers cannot be located; use template llama2 or alpaca")
    return text[len(prefix):]


def _split_system(turns: Sequence[Turn]) -> tuple[str | None, Sequence[Turn]]:
    if turns and turns[0].role == "system":
        return turns[0].content, turns[1:]
    return None, turns


def get_template(name: str, tokenizer):
    classes = {"llama2": Llama2Template, "chat": TokenizerChatTemplate, "alpaca": AlpacaTemplate}
    if name not in classes:
        raise InputError(f"unknown template {name!r}: one of {', '.join(TEMPLATES)}")
    return classes[name](tokenizer)


def end_of_turn_id(template, tokenizer) -> int | None:
    """The id of the token that closes an answer in `template` (`</s>`, `<|im_end|>`, `<|eot_id|>`), which a
    model tuned with it emits to end its turn; None when that is not a single token."""
    ids = tokenizer(template.end_token, add_special_tokens=False).input_ids if template.end_token else []
    return ids[0] if len(ids) == 1 else None


def prompt_text(template, turns: Sequence[Turn]) -> str:
    """The text a model continues to answer a conversation that ends with a user turn."""
    if turns[-1].role != "user":
        raise ValueError("a generation prompt must end with a user turn")
    return "".join(p.text for p in template.pieces(turns))


def encode(template, tokenizer, conversations: Sequence[Sequence[Turn]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids int32 [n], target bool [n]) per conversation, all pieces tokenized in one batched call."""
    merged = [_training_pieces(template, turns) for turns in conversations]
    flat = [p.text for pieces in merged for p in pieces]
    ids = tokenizer(flat, add_special_tokens=False, return_attention_mask=False)["input_ids"] if flat else []
    out, k = [], 0
    for pieces in merged:
        parts = ids[k:k + len(pieces)]
        k += len(pieces)
        lengths = [len(part) for part in parts]
        out.append((np.fromiter((t for part in parts for t in part), np.int32, sum(lengths)),
                    np.repeat(np.array([p.target for p in pieces], bool), lengths)))
    return out


def _merge(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for p in pieces:
        if out and out[-1].target == p.target:
            out[-1] = Piece(out[-1].text + p.text, p.target)
        else:
            out.append(p)
    return out


def _training_pieces(template, turns: Sequence[Turn]) -> list[Piece]:
    """What follows the last answer (ChatML's final newline) is neither a target nor context: left out."""
    pieces = _merge(template.pieces(turns))
    if turns[-1].role == "assistant" and not pieces[-1].target:
        pieces.pop()
    return pieces
