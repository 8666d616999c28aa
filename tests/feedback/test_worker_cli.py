"""`careloop worker` refuses what it cannot do with a clear message."""


def test_worker_refuses_unknown_queues(cli):
    done = cli("worker", "--queues", "feedback,nope")
    assert done.returncode == 1
    assert "unknown queue(s) nope; choose from feedback, generation, training" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_worker_says_it_is_ready_whatever_the_log_level(tmp_path, store, broker):
    """`careloop up` and scripts wait for the ready line; with CARELOOP_LOG_LEVEL=WARNING Celery's
    own INFO line is not printed, and a supervisor waiting for it would never see the worker up."""
    from processes import start_worker

    worker = start_worker(tmp_path / "worker", store.database_url, broker.url, log_level="WARNING")
    try:
        assert "careloop worker ready (feedback)" in worker.log.read_text()
        assert " ready." not in worker.log.read_text()  # Celery's own INFO line is not there
    finally:
        worker.stop()
