"""What answers: the inference engine and its OpenAI/TGI-compatible HTTP API, the adapter registry,
and the client the bot uses."""
