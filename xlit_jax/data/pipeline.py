"""Records -> token ids with target masks -> packed, fixed-shape training batches.

`build(load_mix(sources), tokenizer, ...)` does it all and returns `(PackedBatches, report)`. Each batch is a dict of
numpy arrays of shape [B, L] (L = `seq_len`, B = `tokens_per_batch // seq_len`, so B*L is the token
budget of a micro-batch; the paper used about 4000 tokens):

  input_ids    int32    the tokens fed to the model (0 at padding)
  targets      int32    next-token labels, already shifted: targets[t] is the token after input_ids[t]
                        in the same example (0 at padding and at each example's last position)
  loss_mask    float32  1 where targets[t] is a training target (an answer token, see templates.py)
  segment_ids  int32    1, 2, ... per example packed in the row; 0 = padding. The model lets a token
                        attend only within its own segment
  positions    int32    position in its own example, restarting at 0 per segment

An example of n+1 tokens fills n positions (its last token is only a label).

Truncation policy: an example with more than L+1 tokens keeps its first L+1 tokens if a target token
remains among them (the prompt and the start of the answer), and is dropped otherwise (a prompt longer
than L); `truncation="drop"` drops every over-long example. Both are counted in the report.

Order: per epoch, each pool's examples are shuffled by (seed, pool, epoch). Mixing picks the pool of each
micro-batch: `none` (one pool of everything), `uniform` (a language drawn uniformly per micro-batch, as
Dolly-DT) or `weights` ({lang: weight}); the draw depends only on (seed, batch number). Packing is
first-fit into the B rows; an example that fits no row waits (up to `lookahead` of them, in order) for a
later batch of its pool, so nothing is lost and the order stays deterministic. The look-ahead stops at the
end of an epoch: every example of epoch e is packed before epoch e+1 begins.

`state()` is a small JSON-able dict; `restore(state)` on an iterator built from the same data and
settings continues with exactly the batches that would have followed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np

from xlit_jax.data.records import Record, Source, load_source, parse_source
from xlit_jax.data.templates import TEMPLATES, encode, get_template
from xlit_jax.errors import InputError

BATCH_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")
MIXINGS = ("none", "uniform", "weights")
TRUNCATIONS = ("truncate", "drop")


@dataclasses.dataclass(frozen=True)
class Example:
    ids: np.ndarray  # int32 [n]
    target: np.ndarray  # bool [n]: ids[i] is a training target
    lang: str
    id: str

    @property
    def width(self) -> int:
        """Positions taken in a packed row."""
        return len(self.ids) - 1


def downsample(items: Sequence, n: int, seed: int) -> list:
    """n items drawn without replacement, in their original order."""
    if n > len(items):
        raise ValueError(f"cannot down-sample {len(items)} items to {n}")
    keep = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return [items[i] for i in keep]


def load_mix(sources: Sequence[Source | str], seed: int = 0, skip_invalid: bool = False) -> tuple[list[Record], dict]:
    """All sources' records (each down-sampled to its `n` if given) and a count per source."""
    records, counts = [], {}
    for source in sources:
        source = parse_source(source) if isinstance(source, str) else source
        loaded = load_source(source, skip_invalid=skip_invalid)
        if source.n is not None and source.n > len(loaded.records):
            raise InputError(f"{source.path}: n={source.n}, but it holds {len(loaded.records)} records")
        kept = downsample(loaded.records, source.n, seed) if source.n is not None else loaded.records
        records += kept
        counts[source.path] = {"loaded": len(loaded.records), "kept": len(kept), "skipped": len(loaded.skipped)}
    return records, counts


def tokenize(records: Sequence[Record], template, tokenizer, seq_len: int,
             truncation: str = "truncate") -> tuple[list[Example], dict[str, int]]:
    """Examples within seq_len positions, and counts of `truncated` and `dropped` ones."""
    _check_choice("truncation", truncation, TRUNCATIONS)
    examples, counts = [], {"truncated": 0, "dropped": 0}
    for record, (ids, target) in zip(records, encode(template, tokenizer, [r.turns for r in records])):
        too_long = len(ids) > seq_len + 1
        ids, target = ids[:seq_len + 1], target[:seq_len + 1]
        if (too_long and truncation == "drop") or not target[1:].any():  # nothing left to learn from
            counts["dropped"] += 1
            continue
        counts["truncated"] += too_long
        examples.append(Example(ids, target, record.lang, record.id))
    if not examples:
        raise InputError(f"all {len(records)} examples dropped at seq_len={seq_len} (truncation={truncation}): "
                         f"each too long, or with no answer token in its first {seq_len + 1} tokens")
    return examples, counts


class _Pool:
    """One shuffled stream of examples, epoch after epoch; `pending` holds those deferred by packing."""

    def __init__(self, name: str, examples: list[Example], seed: int, index: int, epochs: int | None):
        self.name, self.examples, self.key, self.epochs = name, examples, (seed, index), epochs
        self.epoch, self.cursor, self.pending = 0, 0, []
        self._order = None

    def done(self) -> bool:
        last = self.epochs is not None and self.epoch + 1 >= self.epochs
        return last and self.cursor == len(self.examples) and not self.pending

    def take(self, new_epoch_ok: bool = True) -> int | None:
        """The next example's index; None at the end of an epoch when a new one may not start yet (an
        example of this epoch still waits), or when the last epoch is used up."""
        if self.pending:
            return self.pending.pop(0)
        if self.cursor == len(self.examples):
            if not new_epoch_ok or (self.epochs is not None and self.epoch + 1 >= self.epochs):
                return None
            self.epoch, self.cursor = self.epoch + 1, 0
        if self._order is None or self._order[0] != self.epoch:
            rng = np.random.default_rng([*self.key, self.epoch])
            self._order = (self.epoch, rng.permutation(len(self.examples)))
        self.cursor += 1
        return int(self._order[1][self.cursor - 1])

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "pending": list(self.pending)}

    def restore(self, state: dict) -> None:
        self.epoch, self.cursor, self.pending = int(state["epoch"]), int(state["cursor"]), list(state["pending"])


class PackedBatches:
    """Iterator of packed micro-batches (see the module docstring); endless unless `epochs` is given."""

    def __init__(self, examples: Sequence[Example], seq_len: int, batch_size: int, seed: int = 0,
                 mixing: str = "none", weights: dict[str, float] | None = None, lookahead: int = 64,
                 epochs: int | None = None):
        _check_choice("mixing", mixing, MIXINGS)
        if not examples:
            raise ValueError("no examples to batch")
        self.seq_len, self.batch_size, self.seed, self.lookahead = seq_len, batch_size, seed, lookahead
        groups: dict[str, list[Example]] = {}
        for ex in examples:
            groups.setdefault("all" if mixing == "none" else ex.lang, []).append(ex)
        names = sorted(groups)
        self.pools = [_Pool(name, groups[name], seed, i, epochs) for i, name in enumerate(names)]
        self.weights = np.array(_weights(names, mixing, weights), float)
        self.batch = 0

    def fingerprint(self) -> dict:
        return {"seed": self.seed, "seq_len": self.seq_len, "batch_size": self.batch_size,
                "pools": {p.name: len(p.examples) for p in self.pools}}

    def state(self) -> dict:
        return {"batch": self.batch, "pools": [p.state() for p in self.pools], "fingerprint": self.fingerprint()}

    def restore(self, state: dict) -> None:
        if state["fingerprint"] != self.fingerprint():
            raise InputError(f"data state was saved for {state['fingerprint']}, but this pipeline is "
                             f"{self.fingerprint()}: resume with the same data and settings")
        self.batch = int(state["batch"])
        for pool, pool_state in zip(self.pools, state["pools"]):
            pool.restore(pool_state)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        live = np.array([not p.done() for p in self.pools])
        if not live.any():
            raise StopIteration
        p = self.weights * live
        rng = np.random.default_rng([self.seed, self.batch])
        pool = self.pools[int(rng.choice(len(self.pools), p=p / p.sum()))]
        rows = self._pack(pool)
        self.batch += 1
        return self._arrays(pool, rows)

    def _pack(self, pool: _Pool) -> list[list[int]]:
        """First-fit: each row's example indices. Examples that fit no row go back to the pool, in order."""
        rows = [[] for _ in range(self.batch_size)]
        free = [self.seq_len] * self.batch_size
        deferred = []
        while max(free) > 0 and len(deferred) < self.lookahead:
            index = pool.take(new_epoch_ok=not deferred)  # an epoch ends before the next begins
            if index is None:
                break
            width = pool.examples[index].width
            row = next((r for r in range(self.batch_size) if free[r] >= width), None)
            if row is None:
                deferred.append(index)
            else:
                rows[row].append(index)
                free[row] -= width
        pool.pending = deferred + pool.pending
        return rows

    def _arrays(self, pool: _Pool, rows: list[list[int]]) -> dict[str, np.ndarray]:
        shape = (self.batch_size, self.seq_len)
        out = {k: np.zeros(shape, np.int32) for k in BATCH_KEYS}
        out["loss_mask"] = np.zeros(shape, np.float32)
        for r, row in enumerate(rows):
            col = 0
            for segment, index in enumerate(row, 1):
                ex = pool.examples[index]
                span = slice(col, col + ex.width)
                out["input_ids"][r, span] = ex.ids[:-1]
                out["targets"][r, span] = ex.ids[1:]
                out["loss_mask"][r, span] = ex.target[1:]
                out["segment_ids"][r, span] = segment
                out["positions"][r, span] = np.arange(ex.width)
                col += ex.width
        return out


def _weights(names: list[str], mixing: str, weights: dict[str, float] | None) -> list[float]:
    if mixing != "weights":
        if weights:
            raise InputError(f"weights are only used with mixing='weights', not {mixing!r}")
        return [1.0] * len(names)
    weights = weights or {}
    if set(weights) != set(names) or any(w < 0 for w in weights.values()) or not sum(weights.values()):
        raise InputError(f"weights must give each language of the data ({', '.join(names)}) a weight >= 0, "
                         f"not all 0; got {weights}")
    return [float(weights[n]) for n in names]


def parse_weights(spec: str) -> dict[str, float]:
    """'en=1,fr=2' -> {'en': 1.0, 'fr': 2.0}."""
    weights = {}
    for item in filter(None, spec.split(",")):
        lang, sep, value = item.partition("=")
        try:
            weights[lang.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"weights {spec!r}: expected LANG=NUMBER items separated by commas, got {item!r}")
    return weights


def check_settings(template: str, mixing: str, truncation: str, weights: str) -> None:
    """The data settings that can be refused without reading anything: xlit-train checks them before the data and
    the weights load, xlit-study for every training cell before its first stage."""
    _check_choice("template", template, TEMPLATES)
    _check_choice("mixing", mixing, MIXINGS)
    _check_choice("truncation", truncation, TRUNCATIONS)
    if weights:
        parse_weights(weights)


def _check_choice(setting: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InputError(f"{setting}={value!r} is not one of {', '.join(choices)}")


def batch_size_for(tokens_per_batch: int, seq_len: int) -> int:
    if tokens_per_batch < seq_len:
        raise InputError(f"tokens_per_batch ({tokens_per_batch}) must be at least seq_len ({seq_len})")
    return tokens_per_batch // seq_len


def build(mix: tuple[list[Record], dict], tokenizer, template: str = "llama2", seq_len: int = 2048,
          tokens_per_batch: int = 4096, seed: int = 0, mixing: str = "none",
          weights: dict[str, float] | None = None, truncation: str = "truncate",
          epochs: int | None = None) -> tuple[PackedBatches, dict]:
    """The training iterator for a data mix (`load_mix`'s records and counts), and a report of what went in
    (counts per source, truncation)."""
    records, per_source = mix
    examples, counts = tokenize(records, get_template(template, tokenizer), tokenizer, seq_len, truncation)
    batches = PackedBatches(examples, seq_len, batch_size_for(tokens_per_batch, seq_len), seed, mixing, weights,
                            epochs=epochs)
    report = {"sources": per_source, "examples": len(examples), "truncated": counts["truncated"],
              "dropped": counts["dropped"], "languages": dict(Counter(ex.lang for ex in examples))}
    return batches, report
