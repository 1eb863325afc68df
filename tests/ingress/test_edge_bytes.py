"""Odd bytes at the webhooks: every one a 400 (or 413) with the error object, nothing stored, on both databases."""
from __future__ import annotations

import json
import socket
import time

import pytest
from sqlalchemy import func, select

from db.models import InboxEvent
from tasks import signatures
from tests.conftest import PLATFORM_SECRET
from tests.netutil import gunicorn_ingress, http_server
from tests.signing import platform_event, platform_headers, stripe_event, stripe_headers


def _count(runtime) -> int:
    with runtime.db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(InboxEvent))


def _refused(response, status: int = 400) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _stripe_text() -> str:
    return json.dumps(stripe_event("customer.created"))


def _platform_text() -> str:
    return json.dumps(platform_event("student.upserted", {"student_id": "stu_1", "name": "Ann"}))


def _with_field(text: str, raw_json_value: str) -> str:
    """The event with one more top-level member, written as raw JSON text (NaN, escapes, nesting)."""
    return text[:-1] + f', "extra": {raw_json_value}' + "}"


# (name, how the body text becomes the bytes sent)
ODD_BODIES = [
    ("utf8_bom", lambda text: "\ufeff".encode() + text.encode()),
    ("utf16_with_bom", lambda text: text.encode("utf-16")),
    ("utf16_le_without_bom", lambda text: text.encode("utf-16-le")),
    ("nan", lambda text: _with_field(text, "NaN").encode()),
    ("infinity", lambda text: _with_field(text, "-Infinity").encode()),
    ("float_beyond_a_double", lambda text: _with_field(text, "1e999").encode()),  # before: stored as Infinity
    ("negative_float_beyond_a_double", lambda text: _with_field(text, "[-1.5e400]").encode()),
    ("lone_surrogate", lambda text: _with_field(text, '"\\udc00"').encode()),
    ("lone_surrogate_key", lambda text: _with_field(text, '{"\\ud800": 1}').encode()),
    ("nul_in_key", lambda text: _with_field(text, '{"a\\u0000": 1}').encode()),
    ("deep_1001", lambda text: _with_field(text, _deep(1001)).encode()),
    ("deep_100000", lambda text: _with_field(text, _deep(100_000)).encode()),
]


@pytest.mark.parametrize(("name", "make"), ODD_BODIES, ids=[n for n, _ in ODD_BODIES])
def test_signed_odd_platform_bodies_are_refused_and_store_nothing(client, runtime, name, make):
    raw = make(_platform_text())
    response = client.post("/webhooks/platform", data=raw, headers=platform_headers(raw))
    assert _refused(response) == "invalid_json"
    assert _count(runtime) == 0


@pytest.mark.parametrize(("name", "make"), ODD_BODIES, ids=[n for n, _ in ODD_BODIES])
def test_signed_odd_stripe_bodies_are_refused_and_store_nothing(client, runtime, name, make):
    raw = make(_stripe_text())
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # UTF-16: the stripe library signs text; the signature cannot match
        headers, expected = stripe_headers(_stripe_text()), "invalid_signature"
    else:
        headers, expected = stripe_headers(text), "invalid_json"
    response = client.post("/webhooks/stripe", data=raw, headers=headers)
    assert _refused(response) == expected
    assert _count(runtime) == 0


def test_an_escaped_backslash_before_u0000_and_a_surrogate_pair_are_stored(client, runtime):
    """Not everything near the refused escapes is refused: `\\\\u0000` is text, `\\ud83d\\ude00` is 😀."""
    text = _with_field(_platform_text(), '["\\\\u0000", "\\ud83d\\ude00", ' + _deep(40) + "]")
    raw = text.encode()
    response = client.post("/webhooks/platform", data=raw, headers=platform_headers(raw))
    assert response.status_code == 200, response.get_data(as_text=True)
    with runtime.db.session_scope() as s:
        assert s.scalar(select(InboxEvent)).payload["extra"][:2] == ["\\u0000", "😀"]


def _platform_signed_with(header: str):
    raw = _platform_text().encode()
    return raw, {"Platform-Signature": header, "Content-Type": "application/json"}


def _good_mac(raw: bytes, t: str) -> str:
    import hashlib
    import hmac

    return hmac.new(PLATFORM_SECRET.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("case", ["non_ascii_v1", "t_400_zeros", "t_plus", "t_leading_zero", "t_underscore",
                                  "t_spaces", "future"])
def test_odd_platform_signature_headers_are_refused(client, runtime, case):
    raw = _platform_text().encode()
    now = str(int(time.time()))
    header = {
        "non_ascii_v1": f"t={now},v1=é{'0' * 63}",
        "t_400_zeros": "t=1" + "0" * 400 + ",v1=" + "0" * 64,
        "t_plus": f"t=+{now},v1={_good_mac(raw, '+' + now)}",
        "t_leading_zero": f"t=0{now},v1={_good_mac(raw, '0' + now)}",
        "t_underscore": f"t={now[:4]}_{now[4:]},v1={_good_mac(raw, now[:4] + '_' + now[4:])}",
        "t_spaces": f"t= {now},v1={_good_mac(raw, ' ' + now)}",
        "future": signatures.sign(raw, PLATFORM_SECRET, int(now) + 301),
    }[case]
    response = client.post("/webhooks/platform", data=raw,
                           headers={"Platform-Signature": header, "Content-Type": "application/json"})
    assert _refused(response) == "invalid_signature"
    assert _count(runtime) == 0


@pytest.mark.parametrize("case", ["non_ascii_v1", "t_400_zeros", "t_plus", "t_leading_zero", "future",
                                  "future_second_t"])
def test_odd_stripe_signature_headers_are_refused(client, runtime, case):
    import stripe

    text = _stripe_text()
    now = int(time.time())

    def mac(t: str) -> str:
        return stripe.WebhookSignature._compute_signature(f"{t}.{text}", "whsec_test_" + "a" * 24)

    header = {
        "non_ascii_v1": f"t={now},v1=é{'0' * 63}",
        "t_400_zeros": "t=1" + "0" * 400 + ",v1=" + "0" * 64,
        "t_plus": f"t=+{now},v1={mac('+' + str(now))}",
        "t_leading_zero": f"t=0{now},v1={mac('0' + str(now))}",
        # correctly signed, dated beyond the 5-minute tolerance ahead (the library checks only the age)
        "future": stripe_headers(text, timestamp=now + 301)["Stripe-Signature"],
        "future_second_t": stripe_headers(text, timestamp=now + 3600)["Stripe-Signature"] + f",t={now}",
    }[case]
    response = client.post("/webhooks/stripe", data=text,
                           headers={"Stripe-Signature": header, "Content-Type": "application/json"})
    assert _refused(response) == "invalid_signature"
    assert _count(runtime) == 0


def test_a_stripe_event_signed_a_little_ahead_is_accepted(client, runtime):
    """Clock skew within the tolerance is fine, ahead as behind."""
    text = _stripe_text()
    response = client.post("/webhooks/stripe", data=text, headers=stripe_headers(text, timestamp=int(time.time()) + 200))
    assert response.status_code == 200
    assert _count(runtime) == 1


# --------------------------------------------------------------------------- chunked bodies over real HTTP


def _raw_http(base_url: str, request: bytes, timeout: float = 15) -> tuple[int, bytes]:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading it all (a 413)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        while length is not None and len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(head.split(b" ", 2)[1]), body


def _chunked(path: str, headers: dict, chunks: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + chunks


def _chunks(raw: bytes, size: int = 4096) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(raw[i:i + size]), raw[i:i + size]) for i in range(0, len(raw), size))
    return out + b"0\r\n\r\n"


def chunked_request(path: str, case: str) -> tuple[bytes, int]:
    """(the raw HTTP request, the status it must get) for a chunked body sent to `path`."""
    stripe = path == "/webhooks/stripe"
    text = _stripe_text() if stripe else _platform_text()
    if case == "over_256_kib":
        text = _with_field(text, json.dumps("x" * (300 * 1024)))
    raw = text.encode()
    headers = stripe_headers(text) if stripe else platform_headers(raw)
    chunks, status = {
        "bad_chunk_size": (b"zz\r\n" + raw + b"\r\n0\r\n\r\n", 400),
        "chunk_size_signed": (b"-10\r\n" + raw + b"\r\n0\r\n\r\n", 400),
        "over_256_kib": (_chunks(raw), 413),
        "good": (_chunks(raw), 200),
    }[case]
    return _chunked(path, headers, chunks), status


CHUNKED_CASES = ["bad_chunk_size", "chunk_size_signed", "over_256_kib", "good"]


def _check_chunked(runtime, base: str, path: str, case: str) -> None:
    request, status = chunked_request(path, case)
    got, body = _raw_http(base, request)
    assert got == status, body
    if status == 200:
        assert _count(runtime) == 1
        return
    error = json.loads(body)
    assert set(error) == {"error"} and set(error["error"]) == {"code", "message"}
    assert _count(runtime) == 0


@pytest.mark.parametrize("case", CHUNKED_CASES)
@pytest.mark.parametrize("path", ["/webhooks/platform", "/webhooks/stripe"])
def test_chunked_bodies_on_the_serve_server(app, runtime, case, path):
    with http_server(app) as base:
        _check_chunked(runtime, base, path, case)


def test_chunked_bodies_on_gunicorn(database, runtime, redis_url, redis_namespace):
    """The production server parses chunked bodies itself: the same answers, on SQLite and PostgreSQL."""
    with gunicorn_ingress(database.url, redis_url, redis_namespace, WEB_CONCURRENCY="1") as (base, _port):
        for path in ("/webhooks/platform", "/webhooks/stripe"):
            for case in CHUNKED_CASES:
                before = _count(runtime)
                request, status = chunked_request(path, case)
                got, body = _raw_http(base, request)
                assert got == status, (path, case, body)
                assert _count(runtime) == before + (status == 200), (path, case)
                if status != 200:
                    error = json.loads(body)
                    assert set(error) == {"error"} and set(error["error"]) == {"code", "message"}, (path, case)
