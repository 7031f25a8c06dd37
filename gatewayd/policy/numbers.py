"""Phone numbers as people and carriers write them -> E.164, with libphonenumber.

Carriers give MO senders in their own form: national (``13800138000``), international
without ``+`` (``8613800138000``), with ``00``, or not a number at all (a short code
``10086``, an alphanumeric name, nothing). An opt-out keyed under the wrong form is
an opt-out that never matches (``13800138000`` is not ``+8613800138000``), so every
carrier says which form it uses (``[[carrier]] mo_country_code``: a country calling
code such as ``"86"``, or ``"international"``) and a sender becomes E.164 only when
libphonenumber (``phonenumbers``, Google's metadata, kept current upstream) finds a
valid number of that country, or any country for ``international``. Anything else
is still stored as received; it just cannot opt out.

The CLI takes numbers from people: ``+`` and the country code, or a national number
with ``--country`` (``139...`` is never read as a +1 number).
"""

from __future__ import annotations

from typing import Final

import phonenumbers

INTERNATIONAL: Final = "international"


def region_of(country_code: str) -> str:
    """The main region of a calling code ("86" -> "CN"); ValueError when there is none."""
    if not country_code.isdigit():
        raise ValueError(f"{country_code!r}: a country calling code is 1-3 digits, e.g. 86")
    region = phonenumbers.region_code_for_country_code(int(country_code))
    if region in ("ZZ", "001"):
        raise ValueError(f"{country_code!r}: no country has this calling code")
    return str(region)


def check_country(value: str) -> str:
    """A carrier's ``mo_country_code``: ``international`` or a calling code; ValueError."""
    if value == INTERNATIONAL:
        return value
    region_of(value)
    return value


def to_e164(number: str, country: str, *, strict: bool = True) -> str | None:
    """The valid E.164 number ``number`` stands for, or None.

    ``country``: a calling code for national numbers (international forms with ``+``
    or ``00`` are understood too), or ``international`` (digits are the country code
    and the number, with or without ``+``/``00``). ``strict``: a number in a range the
    country assigns (libphonenumber's is_valid_number); else one of a possible length
    for its country (is_possible_number: for numbers a person vouches for)."""
    n = number.strip()
    if not n or len(n) > 32:
        return None
    if country == INTERNATIONAL:
        if n.startswith("00"):
            n = n[2:]
        n = "+" + n.lstrip("+")
        region = None
    else:
        try:
            region = region_of(country)
        except ValueError:
            return None
        if n.startswith("00"):
            n = "+" + n[2:]
    try:
        parsed = phonenumbers.parse(n, region)
    except phonenumbers.NumberParseException:
        return None
    ok = (phonenumbers.is_valid_number(parsed) if strict
          else phonenumbers.is_possible_number(parsed))
    if not ok:
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def from_person(number: str, country: str = "") -> str:
    """A number typed at the CLI as E.164; ValueError saying what to type instead.

    Without ``+`` (or ``00``) the number is national and needs ``country``: digits
    alone are never guessed to carry a country code."""
    n = number.strip().replace(" ", "").replace("-", "")
    international = n.startswith(("+", "00"))
    if not international and not country:
        raise ValueError(f"{number!r}: write the number with + and its country code "
                         "(e.g. +8613800138000), or give --country (e.g. --country 86) "
                         "for a national number")
    if country and not international:
        try:
            region_of(country)
        except ValueError as e:
            raise ValueError(f"--country {e}") from None
    e164 = to_e164(n, INTERNATIONAL if international else country, strict=False)
    if e164 is None:
        where = "" if international else f" in country +{country}"
        raise ValueError(f"{number!r}: not a valid phone number{where}")
    return e164
