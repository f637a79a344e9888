"""xlit-serve: an OpenAI-compatible API over a model this project loads, e.g. a local judge.

  xlit-serve --model=smollm2-135m [--host=127.0.0.1 --port=8000 --slots=16 --max_len=2304]
  XLIT_SERVE_API_KEY=KEY xlit-serve ...   (or --api_key_file=PATH: clients must send the key)

Then any `openai` client: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything"), or
lm-evaluation-harness: lm_eval --model local-completions \\
  --model_args model=smollm2-135m,base_url=http://127.0.0.1:8000/v1/completions --tasks ...
See docs/evaluation.md.
"""

import os
import signal
import socket
import sys
from pathlib import Path

from absl import flags, logging

from launch import define_inference_flags, inference_options, run_main
from xlit_jax.errors import InputError
from xlit_jax.io.files import read_text
from xlit_jax.serve.limits import LOOPBACK_HOSTS, Limits, host_name

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "HF dir, .gguf file, checkpoint dir, smollm2-135m", required=True)
flags.DEFINE_string("model_name", None, "the name clients send as `model` (default: the loader's)")
flags.DEFINE_string("host", "127.0.0.1", "interface to listen on (loopback by default; 0.0.0.0 for all)")
flags.DEFINE_integer("port", 8000, "TCP port", lower_bound=0, upper_bound=65535)
flags.DEFINE_integer("slots", 16, "requests decoded at once (the decoding engine's slots)", lower_bound=1)
flags.DEFINE_integer("max_len", None, "KV-cache columns per slot (default: any prompt and answer that fit the "
                     "model's positions; less saves memory, longer requests are answered 400)", lower_bound=1)
flags.DEFINE_integer("max_queue", 256, "requests waiting for a slot at most; more are answered 429 with Retry-After",
                     lower_bound=1)
flags.DEFINE_integer("max_tokens", 512, "the most new tokens a request may ask for (also the default)", lower_bound=1)
flags.DEFINE_integer("max_request_tokens", 1 << 18, "one request's prompt and new tokens over all its choices (prompts "
                     "x n), at most; more are answered 400", lower_bound=1)
flags.DEFINE_integer("max_body_bytes", 4 << 20, "larger request bodies are refused with 413 before being read",
                     lower_bound=1)
flags.DEFINE_string("api_key_file", None, "a file holding the key clients must send as 'Authorization: Bearer KEY' "
                    "(default: $XLIT_SERVE_API_KEY; neither: no check)")
flags.DEFINE_string("api_key", None, "refused: a key on the command line is in every user's process list; use "
                    "$XLIT_SERVE_API_KEY or --api_key_file")
flags.DEFINE_list("allowed_hosts", [], "Host header names answered besides localhost, 127.0.0.1, [::1] and --host "
                  "(others get 421, against DNS rebinding); * answers any")
flags.DEFINE_integer("max_connections", Limits.max_connections, "open connections at most (fewer if the open files "
                     "limit is lower); more are answered 503 and closed", lower_bound=1)
flags.DEFINE_float("idle_timeout", Limits.idle_timeout, "seconds a connection stays open with no request under way")
flags.DEFINE_float("request_timeout", Limits.request_timeout, "seconds for a request's headers and body to arrive "
                   "(else 408)")
define_inference_flags()


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound now: a port in use or a host that is not ours is one line."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise InputError(f"--host={host} --port={port}: cannot listen there: {e.strerror or e}") from None
    return sock


def api_key() -> str | None:
    """The key clients must send: from --api_key_file, else $XLIT_SERVE_API_KEY; never from the command line,
    where every user of the machine reads it in the process list (ps) and it stays in the shell's history:
    refused rather than warned about, since by the time a warning shows, the key is out."""
    if FLAGS.api_key is not None:
        raise InputError("--api_key: a key on the command line is visible to every user in the process list; "
                         "put it in $XLIT_SERVE_API_KEY or in a file for --api_key_file")
    if FLAGS.api_key_file:
        path = Path(FLAGS.api_key_file)
        if path.is_file() and path.stat().st_mode & 0o077:
            logging.warning("%s: other users may read this key file (chmod 600 it)", path)
        key = read_text(path, "key file").strip()
        if not key:
            raise InputError(f"--api_key_file={path}: the file is empty")
        return key
    return os.environ.get("XLIT_SERVE_API_KEY") or None


def limits() -> Limits:
    for flag in ("idle_timeout", "request_timeout"):  # absl's float bounds are inclusive: 0 would pass them
        if FLAGS[flag].value <= 0:
            raise InputError(f"--{flag} must be positive, not {FLAGS[flag].value}")
    from xlit_jax.serve.server import connection_cap, raise_open_files_limit

    raise_open_files_limit()
    return Limits(connection_cap(FLAGS.max_connections), FLAGS.idle_timeout, FLAGS.request_timeout)


def main(argv):
    del argv
    import uvicorn

    import xlit_jax
    from xlit_jax.serve.app import ServeConfig, create_app
    from xlit_jax.serve.server import uvicorn_config

    hosts = tuple(dict.fromkeys(map(host_name, (*LOOPBACK_HOSTS, FLAGS.host, *FLAGS.allowed_hosts))))
    config = ServeConfig(slots=FLAGS.slots, max_queue=FLAGS.max_queue, max_tokens=FLAGS.max_tokens,
                         max_len=FLAGS.max_len, max_body_bytes=FLAGS.max_body_bytes, api_key=api_key(), hosts=hosts,
                         max_request_tokens=FLAGS.max_request_tokens)
    server_limits = limits()
    listening = listen(FLAGS.host, FLAGS.port)  # a busy port is refused before the model loads
    model = xlit_jax.load(FLAGS.model, **inference_options())
    # the engine's thread stopped for good: uvicorn shuts down as on Ctrl-C, then the process exits non-zero
    app = create_app(model, FLAGS.model_name, config, on_failure=lambda: os.kill(os.getpid(), signal.SIGTERM))
    logging.info("serving %s on http://%s:%d/v1 (API key %s; Host names %s; %d connections at most)",
                 FLAGS.model_name or model.name, FLAGS.host, FLAGS.port,
                 "required" if config.api_key else "not checked", ", ".join(hosts), server_limits.max_connections)
    uvicorn.Server(uvicorn_config(app, server_limits)).run(sockets=[listening])
    if app.state.worker.failure:
        print(f"xlit-serve: the decoding engine stopped: {app.state.worker.failure}", file=sys.stderr)
        sys.exit(1)


def run():
    run_main(main, "xlit-serve")


if __name__ == "__main__":
    run()
