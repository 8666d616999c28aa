"""What people said: the Celery app, ingest tasks, the durable store and TRL-ready export."""
