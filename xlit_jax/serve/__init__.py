"""xlit-serve: an OpenAI-compatible HTTP API over our decoding (protocol, text, worker, app, server)."""
