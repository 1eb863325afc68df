"""Mail templates: wording in one place, times in the reader's timezone, tolerant of missing keys."""
from __future__ import annotations

import pytest

from tasks.messaging import mail

STARTS = "2026-07-01T16:30:00+00:00"


def test_booking_confirmation_names_the_step_and_the_local_time():
    rendered = mail.render("booking_confirmed", dict(student_name="Ann", course_code="SFZ", step_label="SFZ-2",
                                                     class_title="Turns", starts_at=STARTS,
                                                     timezone="America/Los_Angeles"))
    assert rendered.subject == "Booked: SFZ-2, Wed 1 Jul 09:30 PDT"
    assert "step SFZ-2 of SFZ" in rendered.text
    assert "Wednesday 1 July 2026, 09:30 PDT (America/Los_Angeles)" in rendered.text
    assert "<strong>SFZ-2</strong>" in rendered.html and "09:30 PDT" in rendered.html


def test_cancellation_outside_policy_says_missed():
    base = dict(step_label="SFZ-1", starts_at=STARTS, timezone="Europe/Berlin")
    assert "counts as missed" in mail.render("booking_cancelled", {**base, "within_policy": False}).text
    inside = mail.render("booking_cancelled", {**base, "within_policy": True}).text
    assert "open again" in inside and "SFZ-1" in inside and "18:30 CEST" in inside


def test_welcome_lists_steps_and_bundle():
    text = mail.render("enrollment_welcome", dict(
        student_name="Ann", course_title="Salsa", course_code="SFZ",
        steps=[{"label": "SFZ-1", "title": "Basics"}, {"label": "SFZ-2"}],
        bundle=[{"kind": "private_credit", "quantity": 2}, {"kind": "group_credit", "quantity": 1}])).text
    assert "SFZ-1 - Basics" in text and "  SFZ-2\n" in text
    assert "2 x private lesson credits" in text and "1 x group class credit\n" in text


@pytest.mark.parametrize("template", mail.TEMPLATES)
def test_every_template_renders_with_an_empty_context(template):
    rendered = mail.render(template, {})
    assert rendered.subject and "\n" not in rendered.subject
    assert rendered.text.strip() and "<html" in rendered.html
    assert "None" not in rendered.text and "Undefined" not in rendered.text


def test_html_is_escaped_and_text_is_not():
    rendered = mail.render("class_cancelled", dict(student_name="<Ann & Bob>", class_title="Rock & Roll"))
    assert "&lt;Ann &amp; Bob&gt;" in rendered.html and "Rock &amp; Roll" in rendered.html
    assert "<Ann & Bob>" in rendered.text


def test_bad_times_and_zones_degrade_gracefully():
    assert mail.local_time("not a time", "Europe/Berlin") == "not a time"
    assert mail.local_time(STARTS, "Not/AZone").endswith("UTC")
    assert mail.local_time("2026-07-01T16:30:00", None) == "Wednesday 1 July 2026, 16:30 UTC"  # naive = UTC
    assert mail.money(12345, "eur") == "123.45 EUR" and mail.money(None) == "-"
    assert mail.money(1500, "jpy") == "1500 JPY"


@pytest.mark.parametrize("currency", ["bhd", "jod", "kwd", "omr", "tnd"])
def test_a_three_decimal_currency_is_written_in_its_thousandths(currency):
    """Stripe counts these in thousandths: 12500 is 12.500, not 125.00."""
    assert mail.money(12500, currency) == f"12.500 {currency.upper()}"
    assert mail.money(1234567, currency.upper()) == f"1,234.567 {currency.upper()}"
    assert mail.money(-5, currency) == f"-0.005 {currency.upper()}"


def test_an_unknown_template_is_a_permanent_error():
    with pytest.raises(mail.UnknownTemplate):
        mail.render("no_such_mail", {})


def _wire(message):
    """The message as a mail client reads it."""
    import email
    import email.policy

    return email.message_from_bytes(message.as_bytes(), policy=email.policy.default)


def test_the_message_carries_both_parts_and_our_message_id():
    message = _wire(mail.build_message(mail.render("step_reminder", {"step_label": "SFZ-3"}), sender="a@example.test",
                                       recipients=["b@example.test", "c@example.test"],
                                       message_id="<outbox-9@coursepipe>"))
    assert message["Message-ID"] == "<outbox-9@coursepipe>" and message["To"] == "b@example.test, c@example.test"
    assert message.get_content_type() == "multipart/alternative"
    assert "SFZ-3" in message.get_body(("plain",)).get_content()
    assert "<html" in message.get_body(("html",)).get_content()


def test_text_beyond_ascii_arrives_as_written():
    rendered = mail.RenderedMail(subject="Bienvenue à Salsa — niveau 1", text="Zoë, à bientôt — 1500 ¥",
                                 html="<p>Zoë, à bientôt — 1500 ¥</p>")
    message = _wire(mail.build_message(rendered, sender="Studio Café <courses@example.test>",
                                       recipients=["zoe@example.test"], message_id="<outbox-10@coursepipe>"))
    assert message["Subject"] == "Bienvenue à Salsa — niveau 1"
    assert message["From"].addresses[0].display_name == "Studio Café"
    assert message["From"].addresses[0].addr_spec == "courses@example.test"
    assert message.get_body(("plain",)).get_content().strip() == "Zoë, à bientôt — 1500 ¥"
    assert message.get_body(("html",)).get_content().strip() == "<p>Zoë, à bientôt — 1500 ¥</p>"
    raw = mail.build_message(rendered, sender="courses@example.test", recipients=["zoe@example.test"],
                             message_id="<outbox-11@coursepipe>").as_bytes()
    assert raw.isascii()  # 7-bit on the wire: encoded words and quoted-printable


def test_every_template_named_in_the_code_exists():
    """Outbox rows name templates by string; an unknown one would end `dead` at delivery. Catch it here."""
    import re
    from pathlib import Path

    root = Path(mail.__file__).resolve().parents[1]  # all of tasks/
    named = set()
    for path in root.rglob("*.py"):
        source = path.read_text()
        named |= set(re.findall(r'template="([a-z_]+)"', source))
        named |= set(re.findall(r'_mail\(\s*session,\s*"([a-z_]+)"', source))
    assert named, "the scan found no template names at all"
    assert named <= set(mail.TEMPLATES), sorted(named - set(mail.TEMPLATES))


@pytest.mark.parametrize("name,value", [
    ("Subject", "Your booking: SFZ-2  Turns "), ("Subject", "x" * 69), ("Subject", "x" * 70), ("Subject", "x" * 200),
    ("Subject", "Tab\there"), ("Subject", ""), ("Subject", "Bienvenue à Salsa"), ("To", "a@example.test, b@example.test"),
    ("Content-Type", 'text/plain; charset="utf-8"'), ("From", "=?utf-8?q?Studio_Caf=C3=A9?= <c@example.test>"),
    ("Subject", "a long subject " * 8), ("To", "a@example.test\x0bBcc: b@example.test"), ("Subject", "form\x0cfeed"),
    ("Subject", "group\x1dseparator"),
])
def test_headers_are_written_as_compat32_writes_them(name, value):
    """A header that fits on its line skips compat32's folding; the bytes are the same as with it."""
    from email.policy import compat32

    def written(policy, method):
        try:
            return getattr(policy, method)(name, value)
        except Exception as exc:  # compat32 refuses a line break that looks like a header of its own
            return type(exc)

    for linesep in ("\n", "\r\n"):
        ours, theirs = mail._POLICY.clone(linesep=linesep), compat32.clone(linesep=linesep)
        assert written(ours, "fold_binary") == written(theirs, "fold_binary")
        assert written(ours, "fold") == written(theirs, "fold")


def test_each_message_has_a_boundary_of_its_own_that_a_client_splits_on():
    rendered = mail.render("step_reminder", {"step_label": "SFZ-3"})
    first, second = (mail.build_message(rendered, sender="a@example.test", recipients=["b@example.test"],
                                        message_id=f"<outbox-{n}@coursepipe>") for n in (12, 13))
    assert first.get_boundary() != second.get_boundary()
    parts = list(_wire(first).iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert first.get_boundary() not in parts[0].get_content() + parts[1].get_content()
