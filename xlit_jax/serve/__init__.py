"""xlit-serve: an OpenAI-compatible HTTP API over our decoding (protocol, batcher, app, server)."""
