"""What answers: the inference engine, its OpenAI/TGI-compatible HTTP API and the client the bot
uses. Which adapter version is live is ``adapters``' concern: the server is handed it at start."""
