"""xlit-generate: greedy responses for a JSONL of prompts, appended per batch and resumed on rerun.

Input lines: {"id": ..., "prompt": "text" | [{"role": ..., "content": ...}, ...]}.
Output lines: {"id": ..., "output": "...", "model": ..., "prompt_tokens": N, "new_tokens": N}.
"""

from absl import app, flags, logging

from xlit_jax.io.files import InputError, append_jsonl, read_jsonl, resume_jsonl

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "HF dir, .gguf file, checkpoint dir, smollm2-135m or preset:NAME")
flags.DEFINE_string("prompts", None, "input JSONL", required=True)
flags.DEFINE_string("out", None, "output JSONL (appended; existing ids are skipped)", required=True)
flags.DEFINE_integer("max_new_tokens", 256, "new tokens per prompt at most")
flags.DEFINE_float("repetition_penalty", 1.1, "HF-style repetition penalty (1 = off)")
flags.DEFINE_integer("batch_size", 8, "prompts decoded together")
flags.DEFINE_string("dtype", None, "compute dtype override: float32 | bfloat16")


def read_prompts(path) -> list[dict]:
    """Validate every line before any work starts: a bad line is an error naming file:line:field."""
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
        key = str(row["id"])
        if key in seen:
            raise InputError(f"{where}: field 'id': duplicate id {row['id']!r}")
        seen.add(key)
        rows.append(row)
    return rows


def main(argv):
    del argv
    import xlit_jax

    rows = read_prompts(FLAGS.prompts)
    done = {str(r.get("id")) for r in resume_jsonl(FLAGS.out)}
    todo = [r for r in rows if str(r["id"]) not in done]
    logging.info("%d prompts, %d already done, %d to generate", len(rows), len(rows) - len(todo), len(todo))
    if not todo:
        return
    overrides = {"dtype": FLAGS.dtype} if FLAGS.dtype else {}
    model = xlit_jax.load(FLAGS.model, **overrides)
    ids = [model.encode(r["prompt"]) for r in todo]

    def write(indices, outputs):
        append_jsonl(FLAGS.out, [
            {"id": todo[i]["id"], "output": model.tokenizer.decode(out, skip_special_tokens=True),
             "model": model.name, "prompt_tokens": len(ids[i]), "new_tokens": len(out)}
            for i, out in zip(indices, outputs)])
        logging.info("wrote %d responses", len(indices))

    model.generate_ids(ids, FLAGS.max_new_tokens, FLAGS.repetition_penalty, FLAGS.batch_size, on_batch=write)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
