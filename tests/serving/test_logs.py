"""Issue 29: structured logs — JSON lines with the request id, the connected account and the
payment where there is one, and nothing else of a record (no card or personal data)."""

from __future__ import annotations

import json
import logging

import pytest

from reclaim import logs


class _Lines(logging.Handler):
    """Formats each record as a JSON line when it is written (in the caller's context)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_json_lines_carry_the_context_and_nothing_else(capfd) -> None:
    logs.configure("INFO", "json")
    log = logging.getLogger("reclaim.test")
    with logs.bound(request_id="req-1", account_id="acct_1", payment_id="in_1"):
        log.info("charged %s", "in_1", extra={"card": "4242424242424242", "email": "a@b.example"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    err = capfd.readouterr().err
    first, second = (json.loads(line) for line in err.strip().splitlines())
    assert first == {
        "time": first["time"], "level": "INFO", "logger": "reclaim.test",
        "message": "charged in_1", "request_id": "req-1", "account_id": "acct_1",
        "payment_id": "in_1",
    }  # fmt: skip
    assert first["time"].endswith("+00:00")
    assert "4242" not in err and "a@b.example" not in err
    assert "account_id" not in second and second["error"] == "ValueError"
    assert second["message"] == "failed"
    assert "Traceback" in second["traceback"]
    # a lone surrogate (any text a caller may send) cannot break the line: it is escaped
    odd, lines = logging.getLogger("reclaim.test.odd"), _Lines()
    odd.propagate = False  # kept from the test runner's own capture, which cannot carry it
    odd.addHandler(lines)
    odd.warning("no payment %s", "in_\ud800")
    assert lines.lines[0]["message"] == "no payment in_\ud800"
    with pytest.raises(ValueError, match="not a log context field"):
        with logs.bound(email="a@b.example"):
            pass


def test_every_request_gets_an_id_that_its_log_lines_carry(client) -> None:
    lines = _Lines()
    logging.getLogger("reclaim.access").addHandler(lines)
    logging.getLogger("reclaim.access").setLevel(logging.INFO)
    try:
        given = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a.1"})
        made = client.get("/healthz", headers={"X-Request-ID": "no spaces or {braces}" * 5})
        missing = client.post("/v1/decisions", json={"payment_id": "in_nobody"})
    finally:
        logging.getLogger("reclaim.access").removeHandler(lines)
    assert given.headers["x-request-id"] == "lb-7f3a.1"
    assert made.headers["x-request-id"] != "no spaces or {braces}" * 5
    assert len(made.headers["x-request-id"]) == 32
    assert missing.status_code == 404
    by_id = {line["request_id"]: line for line in lines.lines}
    assert by_id["lb-7f3a.1"]["message"].startswith("GET /healthz 200 ")
    decided = by_id[missing.headers["x-request-id"]]
    assert decided["message"].startswith("POST /v1/decisions 404 ")
    assert "in_nobody" not in json.dumps(lines.lines)  # the route, not the body or the query
