"""tasks.events: the fast check of plain mail addresses never accepts what email_validator refuses."""
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings, strategies as st

from tasks.events import mail_address, plain_address

LOCAL = st.text(alphabet="abcXYZ019_+-.!#~\"@ é", min_size=0, max_size=70)
LABEL = st.text(alphabet="abcXYZ019-_é", min_size=0, max_size=66)
TLD = st.sampled_from(["com", "de", "test", "local", "localhost", "onion", "arpa", "invalid", "c0m", "x", "", "COM",
                       "xn--p1ai", "example", "museum"])


def accepted_by_library(value: str) -> bool:
    try:
        validate_email(value, check_deliverability=False, test_environment=True)
        return True
    except EmailNotValidError:
        return False


@settings(max_examples=3000, deadline=None)
@given(local=LOCAL, labels=st.lists(LABEL, min_size=0, max_size=4), tld=TLD)
def test_fast_acceptance_implies_the_library_accepts(local, labels, tld):
    value = f"{local}@{'.'.join([*labels, tld])}"
    if plain_address(value):
        assert accepted_by_library(value), value


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="ab9.-_+@", max_size=30))
def test_fast_acceptance_implies_the_library_accepts_any_text(value):
    if plain_address(value):
        assert accepted_by_library(value), value


def test_common_addresses_take_the_fast_path_and_odd_ones_the_library():
    for value in ("s1@bench.test", "first.last+tag@mail.example.com", "A_B-c@sub-domain.co.uk"):
        assert plain_address(value) and mail_address(value) == value
    for value in ("a@localhost", "a@b.local", "a..b@x.com", "a@-x.com", "a@x--y.com", "é@x.com", "a@x.c0m",
                  f"{'a' * 65}@x.com", f"a@{'b' * 64}.com"):
        assert not plain_address(value)
    for value in ("a@localhost", "a..b@x.com", "a@-x.com", "two@@x.com"):
        try:
            mail_address(value)
        except ValueError:
            continue
        raise AssertionError(f"{value!r} was accepted")
