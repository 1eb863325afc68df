"""The folders keep the architecture: layers one way, the inbox generic, one wiring of handlers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coursepipe import runtime as composition

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: commands → ingress | scheduler → workers → tasks → db,
    the inbox importing no domain package, the domain packages layered, no framework in the core."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_handled_event_type_has_exactly_one_handler():
    table = composition.handler_table()
    stripe = {t for s, t in table if s == "stripe"}
    platform = {t for s, t in table if s == "platform"}
    assert {"checkout.session.completed", "checkout.session.async_payment_succeeded",
            "checkout.session.async_payment_failed", "charge.refunded", "charge.dispute.created",
            "charge.dispute.closed", "product.updated", "price.updated"} <= stripe
    assert platform == {"student.upserted", "class.upserted", "booking.created", "booking.cancelled",
                        "attendance.marked"}


def test_a_pair_wired_twice_is_refused_at_start_up():
    class Twice:
        HANDLERS = {("stripe", "charge.refunded"): lambda ctx, event: None}

    with pytest.raises(RuntimeError, match="two handlers for \\('stripe', 'charge.refunded'\\)"):
        composition.handler_table(Twice)
