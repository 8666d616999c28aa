"""The serving API's routers, one per protocol it speaks: OpenAI, TGI and vLLM's adapter control."""
