"""xlit-generate: greedy responses for a JSONL of prompts, each appended as it finishes, resumed on rerun.

Input lines: {"id": ..., "prompt": "text" | [{"role": ..., "content": ...}, ...]}.
Output lines: {"id": ..., "output": "...", "model": ..., "decoding": {...}, "prompt_tokens": N, "new_tokens": N}.
A rerun on the same --out generates only the ids not there yet, with the same model and settings (else it
refuses, before the model loads).
"""

from absl import flags

from launch import define_inference_flags, inference_options, run_main
from xlit_jax.errors import InputError
from xlit_jax.io.files import output_lock, read_jsonl
from xlit_jax.io.tokenizer import prompt_too_long
from xlit_jax.loader import REPETITION_PENALTY

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "HF dir, .gguf file, checkpoint dir, smollm2-135m or preset:NAME")
flags.DEFINE_string("prompts", None, "input JSONL", required=True)
flags.DEFINE_string("out", None, "output JSONL (appended; existing ids are skipped)", required=True)
flags.DEFINE_integer("max_new_tokens", 256, "new tokens per prompt at most", lower_bound=1)
flags.DEFINE_float("repetition_penalty", REPETITION_PENALTY, "HF-style repetition penalty (1 = off)")
flags.DEFINE_integer("batch_size", 8, "prompts decoded together (the decoding engine's slots)", lower_bound=1)
define_inference_flags()


def read_prompts(path, positions: int) -> list[dict]:
    """Validate every line before any work starts: a bad line is an error naming file:line:field. A prompt
    too long for the model's `positions` by a cheap bound is one too (tokenizing a 10 MB line takes 20 s)."""
    rows, seen = [], set()
    for line, row in read_jsonl(path):
        where = f"{path}:{line}"
        if not isinstance(row, dict) or "id" not in row or "prompt" not in row:
            raise InputError(f"{where}: expected an object with fields 'id' and 'prompt'")
        prompt = row["prompt"]
        chat = isinstance(prompt, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt)
        if not (isinstance(prompt, str) or (chat and prompt)):
            raise InputError(f"{where}: field 'prompt' must be a string or a list of {{role, content}} messages")
        if not (prompt.strip() if isinstance(prompt, str) else any(m["content"].strip() for m in prompt)):
            raise InputError(f"{where}: field 'prompt' is empty")
        problem = prompt_too_long(prompt, positions)
        if problem:
            raise InputError(f"{where}: field 'prompt': {problem}")
        key = str(row["id"])
        if key in seen:
            raise InputError(f"{where}: field 'id': duplicate id {row['id']!r}")
        seen.add(key)
        rows.append(row)
    return rows


def main(argv):
    del argv
    import xlit_jax
    from xlit_jax.decode.to_jsonl import decoding_record, finished_rows, generate_to_jsonl
    from xlit_jax.loader import load_config, model_name

    rows = read_prompts(FLAGS.prompts, load_config(FLAGS.model).max_positions)
    if not rows:
        raise InputError(f"{FLAGS.prompts}: no prompts")
    with output_lock(FLAGS.out):  # a second writer of --out, or another model's or setting's, is refused
        decoding = decoding_record(FLAGS.max_new_tokens, FLAGS.repetition_penalty)
        finished_rows(FLAGS.out, model_name(FLAGS.model), decoding)  # before the model loads
        model = xlit_jax.load(FLAGS.model, **inference_options())
        generate_to_jsonl(model, rows, FLAGS.out, max_new_tokens=FLAGS.max_new_tokens,
                          repetition_penalty=FLAGS.repetition_penalty, slots=FLAGS.batch_size)


def run():
    run_main(main, "xlit-generate")


if __name__ == "__main__":
    run()
