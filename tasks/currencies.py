"""Money as Stripe counts it: an integer amount in the currency's minor unit
(https://docs.stripe.com/currencies#minor-units). Each currency's exponent is known here alone:

- most currencies count hundredths: 120.00 EUR is `12000`;
- the zero-decimal currencies count whole units: 1200 JPY is `1200`;
- the three-decimal currencies count thousandths: 12.500 KWD is `12500`, and Stripe charges them only in
  steps of ten (the last digit 0).
"""
from __future__ import annotations

# Stripe's zero-decimal currencies: the amount is already in major units
ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
                          "xaf", "xof", "xpf"})
# Stripe's three-decimal currencies: the amount is in thousandths
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def exponent(currency: str | None) -> int:
    """How many decimals an amount in `currency` has: 0, 3, else 2 (an unknown or missing code included)."""
    code = currency.strip().lower() if isinstance(currency, str) else ""
    return 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2


def major(amount: int, currency: str | None, *, grouped: bool = False) -> str:
    """An amount in minor units written in major units, exactly (no float): 12000 EUR → '120.00', 1200 JPY →
    '1200', 12500 KWD → '12.500'; `grouped` separates the thousands ('1,200.00')."""
    places = exponent(currency)
    whole, fraction = divmod(abs(amount), 10 ** places)
    text = f"{whole:,}" if grouped else str(whole)
    sign = "-" if amount < 0 else ""
    return f"{sign}{text}.{fraction:0{places}d}" if places else f"{sign}{text}"


def charge_problem(amount: int, currency: str | None) -> str | None:
    """Why Stripe would refuse to charge `amount`, or None: in a three-decimal currency the last digit must be 0
    (https://docs.stripe.com/currencies#three-decimal)."""
    if exponent(currency) == 3 and amount % 10:
        return (f"Stripe charges {currency.upper()} in steps of 0.010: the last decimal must be 0 "
                f"({major(amount - amount % 10, currency)}, not {major(amount, currency)})")
    return None
