"""`careloop worker` refuses what it cannot do with a clear message."""


def test_worker_refuses_unknown_queues(cli):
    done = cli("worker", "--queues", "feedback,nope")
    assert done.returncode == 1
    assert "unknown queue(s) nope; choose from feedback, generation, training" in done.stderr
    assert "Traceback" not in done.stderr
