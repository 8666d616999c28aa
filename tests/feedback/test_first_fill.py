"""Issue 29, 6: the review fill sent as `careloop up` starts meets serving still loading its model. It
died with a traceback, and the queue stayed empty until a student's question sent another fill, 5.5
minutes later."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from processes import TOKEN, start_server, start_worker, stop_server, wait_for

from careloop.queues import producer
from careloop.redis_server import free_port
from feedback.store import ReviewItem
from feedback.tasks import FILL_REVIEW_QUEUE


class _Loading(BaseHTTPRequestHandler):
    """A server that is up but still loading its model: 503 to every request."""

    def _loading(self) -> None:
        body = b'{"error": {"message": "the model is loading"}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _loading

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def _loading_server(port: int):
    server = ThreadingHTTPServer(("127.0.0.1", port), _Loading)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_fill_sent_before_serving_is_up_waits_for_it_without_a_traceback_and_runs_once_it_answers(
        tmp_path, store, broker, settings, tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    worker = start_worker(tmp_path / "worker", store.database_url, broker.url, queues="generation",
                          serving_url=url, control_token=TOKEN, base_model=str(tiny_model_dir),
                          review_batch_size="2", review_gold_fraction="0", answer_max_tokens="8",
                          retrieval_enabled="false")
    celery = producer(settings)

    def lines(event: str) -> list[str]:
        return [line for line in worker.log.read_text().splitlines() if event in line]

    waiting, gave_up = "review_fill_waiting_for_serving", "review_fill_gave_up_waiting_for_serving"
    try:
        # As `careloop up` starts: beat's fill comes before serving listens, then serving answers 503
        # while it loads its model, then it is up.
        celery.send_task(FILL_REVIEW_QUEUE, kwargs={"scheduled": True}, queue="generation", expires=300)
        wait_for(lambda: lines(waiting), timeout=20, message="the fill waiting: nothing listens")
        with _loading_server(port):
            wait_for(lambda: "(503)" in lines(waiting)[-1], timeout=20, message="the fill waiting: serving loads")
        server = start_server(tmp_path / "serve", tiny_model_dir, tmp_path / "adapters", serving_port=str(port))
        try:  # tries come at most 5 s apart here (half the tests' visibility timeout); 2 items take a few s
            wait_for(lambda: store.count(ReviewItem) >= 2, timeout=20, message="the items once serving answers")
        finally:
            stop_server(server)
        assert not lines(gave_up)
        # A fill that expires while serving is away (beat's next one takes over) gives up, with one warning.
        celery.send_task(FILL_REVIEW_QUEUE, kwargs={"scheduled": True}, queue="generation", expires=5)
        wait_for(lambda: lines(gave_up), timeout=20, message="the expiring fill to give up")
    finally:
        celery.close()
        worker.kill()
    assert "Traceback" not in worker.log.read_text()
    assert "Connection refused" in lines(waiting)[0] and all(url in line for line in lines(waiting))
    assert len(lines(gave_up)) == 1 and url in lines(gave_up)[0]
    assert len(lines("review_queue_filled")) == 1
