import json
import logging

from careloop.log import configure_logging, get_logger


def _last_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


def test_json_logging_is_one_object_per_line_for_ours_and_third_party(capsys):
    configure_logging("INFO", json=True)
    get_logger("careloop.test").info("adapter_loaded", adapter="med-v0001", ms=12)
    event = json.loads(_last_line(capsys))
    assert event["event"] == "adapter_loaded" and event["adapter"] == "med-v0001"
    assert event["level"] == "info" and "timestamp" in event
    logging.getLogger("uvicorn.error").warning("port %d busy", 8000)
    assert json.loads(_last_line(capsys))["event"] == "port 8000 busy"


def test_text_logging_keeps_exceptions_on_one_line(capsys):
    configure_logging("INFO", json=False)
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        get_logger("careloop.test").exception("failed", item=3)
    output = capsys.readouterr().err.strip()
    assert len(output.splitlines()) == 1
    assert "event='failed'" in output and "ValueError" in output


def test_level_filters_debug(capsys):
    configure_logging("INFO")
    get_logger("careloop.test").debug("noisy")
    assert capsys.readouterr().err == ""
