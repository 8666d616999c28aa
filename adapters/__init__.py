"""Which adapter version answers: the registry of LoRA versions (``adapters.registry``) and their
rollout into serving (``adapters.rollout``: load, smoke-test, flip, unload). Between the domains that
publish and promote (trainer, the admin page, the CLI) and serving, which only answers."""
