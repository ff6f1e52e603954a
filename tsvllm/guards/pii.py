"""PIIGuard: e-mail addresses, phone numbers, payment cards, US SSNs, IP addresses.

Each detector is tuned to stay quiet on ordinary text (dates, versions, prices, order
numbers, ISBNs, serial numbers); see ``tests/unit/guard_corpus/ordinary.txt``.

* ``email`` - ``local@domain.tld`` (ASCII; TLD of 2-24 letters).
* ``phone`` - international numbers that start with ``+`` (8-15 digits in groups), and US
  numbers with separators: ``(415) 555-2671``, ``415-555-2671``, ``415.555.2671``,
  ``1 415 555 2671``. Area code and exchange must start with 2-9. A bare run of ten digits
  is *not* a phone number here (it is indistinguishable from an order number).
* ``card`` - 13-19 digits, unseparated or in groups of 3-6 digits (first group of 4) joined by
  one consistent space or dash, starting with 2-6 (the payment-card issuer ranges), and
  passing the Luhn check. Inside a longer run of groups every 13-19 digit window of whole
  groups is tried, so ``4111 1111 1111 1111 12/27`` is still found.
* ``ssn`` - ``123-45-6789`` or ``123 45 6789`` (one separator), or nine digits right after
  "SSN"/"social security number"; area 000, 666 and 900-999, group 00 and serial 0000 are
  invalid and not matched.
* ``ip`` - IPv4 (optionally with a ``/nn`` prefix length) and IPv6 (validated with
  :mod:`ipaddress`). Not flagged: unspecified and loopback addresses (``0.0.0.0``,
  ``127.x.x.x``, ``::``, ``::1``), netmasks (``255.x.x.x``), and dotted quads right after
  "version", "section", "build"... (``version 1.2.0.4``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from tsvllm.guards.base import Action, Finding, RuleGuard, Stage

__all__ = ["PIIGuard", "luhn_valid"]

PII_KINDS = ("email", "phone", "card", "ssn", "ip")

_EMAIL = (
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"[A-Za-z0-9][A-Za-z0-9-]{0,62}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![\w-])"
)
_PHONE = (
    # international: + country code, then 1-6 more groups (validated: 8-15 digits in all)
    r"(?<![\w+])(?P<intl>\+[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\)|[ .-]?\d{1,4})(?:[ .-]?\d{2,4}){1,5})"
    r"(?![\w]|[.,]\d)"
    # US / NANP with separators, optional leading 1
    r"|(?<![\w+.-])(?:1[ .-]?)?(?:\([2-9]\d\d\)[ .-]?|[2-9]\d\d[ .-])[2-9]\d\d[ .-]\d{4}"
    r"(?![\w-]|[.,]\d)"
)
# A run of >= 13 digits, each optionally followed by one space or dash.
_DIGIT_RUN = r"(?<![\w.,/-])(?<!\d[ -])(?:\d[ -]?){12,}\d"
_SSN = r"(?<![\w-])(?!000|666|9\d\d)\d{3}(?P<sep>[- ])(?!00)\d\d(?P=sep)(?!0000)\d{4}(?![\w-])"
_SSN_BARE = (
    r"(?i:\b(?:ssn|social\s+security(?:\s+(?:number|no\.?|#))?)[\s:#=-]{0,5})"
    r"(?P<bare>(?!000|666|9\d\d)\d{3}(?!00)\d\d(?!0000)\d{4})(?!\d)"
)
# Where any of the digit-based detectors could match: a run of digits and separators of at
# least 7 characters. Each detector then runs only on these (few, short) regions.
_NUMERIC = r"[0-9(+][0-9 ().+/-]{5,}[0-9]"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?:/\d{{1,2}})?(?![\w]|\.\d)"
_IPV6 = (
    r"(?<![\w:.])(?=[0-9A-Fa-f:]*::|(?:[0-9A-Fa-f]{1,4}:){7})"
    r"[0-9A-Fa-f:]{2,39}(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?:%\w{1,16})?(?![\w:]|\.\d)"
)
# Words after which a dotted quad is a version or a section number, not an address.
_NOT_IP_BEFORE = (
    r"(?i)(?:\bv|\b(?:version|ver|release|rel|build|firmware|fw|rev|revision|section|sec|"
    r"chapter|clause|figure|fig|table|step|item|rule|paragraph|para|art|article|no))"
    r"\.?\s*[:=#]?\s*$"
)

LABELS = {
    "email": "[REDACTED:EMAIL]",
    "phone": "[REDACTED:PHONE]",
    "card": "[REDACTED:CARD]",
    "ssn": "[REDACTED:SSN]",
    "ip": "[REDACTED:IP]",
}


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check on a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_like(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _card_windows(run: str, groups: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans (in ``run``) of whole-group windows of a digit run that look like a card number.

    ``groups`` are the spans of the digit groups in ``run``. A window is one group of 13-19
    digits, or a group of 4 followed by groups of 3-6 digits joined by the same separator.
    """
    found: list[tuple[int, int]] = []
    n = len(groups)
    i = 0
    while i < n:
        first_s, first_e = groups[i]
        hit = None
        if _card_like(run[first_s:first_e]):
            hit = (first_s, first_e, i)
        elif first_e - first_s == 4 and run[first_s] in "23456" and i + 1 < n:
            digits = run[first_s:first_e]
            sep = run[first_e]
            for j in range(i + 1, n):
                s, e = groups[j]
                if run[s - 1] != sep or not 3 <= e - s <= 6:
                    break
                digits += run[s:e]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_valid(digits):
                    hit = (first_s, e, j)  # keep extending: prefer the longest valid window
        if hit:
            found.append((hit[0], hit[1]))
            i = hit[2] + 1
        else:
            i += 1
    return found


class PIIGuard(RuleGuard):
    """Personal data: ``pii.email``, ``pii.phone``, ``pii.card``, ``pii.ssn``, ``pii.ip``.

    ``kinds`` selects the detectors (default: all). Redaction labels are
    ``[REDACTED:EMAIL]``, ``[REDACTED:PHONE]``, ``[REDACTED:CARD]``, ``[REDACTED:SSN]``,
    ``[REDACTED:IP]``.
    """

    name = "pii"

    def __init__(
        self,
        *,
        mode: Action | str = Action.REDACT,
        stages: Iterable[Stage | str] | None = None,
        kinds: Iterable[str] = PII_KINDS,
        name: str | None = None,
    ) -> None:
        super().__init__(mode=mode, stages=stages, name=name)
        kinds = tuple(dict.fromkeys(kinds))
        unknown = [k for k in kinds if k not in PII_KINDS]
        if unknown:
            raise ValueError(f"unknown PII kinds {unknown}; expected some of {list(PII_KINDS)}")
        self.kinds = kinds
        self._email = re.compile(_EMAIL)
        self._phone = re.compile(_PHONE)
        self._run = re.compile(_DIGIT_RUN)
        self._digits = re.compile(r"\d+")
        self._ssn = re.compile(_SSN)
        self._ssn_bare = re.compile(_SSN_BARE)
        self._numeric = re.compile(_NUMERIC)
        self._ipv4 = re.compile(_IPV4)
        self._ipv6 = re.compile(_IPV6)
        self._not_ip_before = re.compile(_NOT_IP_BEFORE)

    def find(self, text: str) -> list[Finding]:
        """All PII spans in ``text``."""
        out: list[Finding] = []
        kinds = self.kinds
        if "email" in kinds and "@" in text:
            label = LABELS["email"]
            out += [Finding(*m.span(), "pii.email", label) for m in self._email.finditer(text)]
        n = len(text)
        phone, card, ssn, ip = (k in kinds for k in ("phone", "card", "ssn", "ip"))
        numeric = self._numeric.finditer(text) if phone or card or ssn or ip else ()
        for m in numeric:
            # Cheap shape tests pick the detectors worth running on this region.
            s, e = m.span()
            c = m.group()
            size = e - s
            end = min(n, e + 2)  # room for the detectors' look-ahead
            if ip and c.count(".") >= 3:
                out += self._ipv4s(text, s, end)
            if size < 11 and "+" not in c:
                continue
            if phone and (size >= 12 or "+" in c):
                out += self._phones(text, s, end)
            if ssn and ("-" in c or " " in c):
                label = LABELS["ssn"]
                out += [
                    Finding(*x.span(), "pii.ssn", label) for x in self._ssn.finditer(text, s, end)
                ]
            if card and size >= 13:
                out += self._cards(text, s, e)
        if ssn:
            low = text.lower()
            if "ssn" in low or "social" in low:
                label = LABELS["ssn"]
                out += [
                    Finding(*x.span("bare"), "pii.ssn", label)
                    for x in self._ssn_bare.finditer(text)
                ]
        if ip and ":" in text:
            out += self._ipv6s(text)
        return out

    def _phones(self, text: str, start: int, end: int) -> list[Finding]:
        out = []
        for m in self._phone.finditer(text, start, end):
            intl = m.group("intl")
            if intl is not None:
                n = sum(c.isdigit() for c in intl)
                if not 8 <= n <= 15:
                    continue
            out.append(Finding(m.start(), m.end(), "pii.phone", LABELS["phone"]))
        return out

    def _cards(self, text: str, start: int, end: int) -> list[Finding]:
        out = []
        for m in self._run.finditer(text, start, end):
            run_end = m.end()
            nxt = text[run_end : run_end + 2]
            if nxt[:1].isalpha() or nxt[:1] == "_" or (nxt[:1] in ".," and nxt[1:2].isdigit()):
                continue
            base = m.start()
            run = m.group()
            groups = [g.span() for g in self._digits.finditer(run)]
            for s, e in _card_windows(run, groups):
                out.append(Finding(base + s, base + e, "pii.card", LABELS["card"]))
        return out

    def _ipv4s(self, text: str, start: int, end: int) -> list[Finding]:
        out = []
        for m in self._ipv4.finditer(text, start, end):
            first = m.group().split(".", 1)[0]
            if first in ("0", "127", "255"):
                continue
            if self._not_ip_before.search(text, max(0, m.start() - 16), m.start()):
                continue
            out.append(Finding(m.start(), m.end(), "pii.ip", LABELS["ip"]))
        return out

    def _ipv6s(self, text: str) -> list[Finding]:
        """IPv6 addresses, searched only around ``::`` or a dense run of colons."""
        n = len(text)
        regions: list[tuple[int, int]] = []
        p = text.find(":")
        while p >= 0:
            if text.startswith("::", p) or text.count(":", p, p + 40) >= 7:
                lo, hi = max(0, p - 40), min(n, p + 80)
                if regions and lo <= regions[-1][1]:
                    regions[-1] = (regions[-1][0], hi)
                else:
                    regions.append((lo, hi))
            p = text.find(":", p + 1)
        out = []
        for lo, hi in regions:
            for m in self._ipv6.finditer(text, lo, hi):
                cand = m.group()
                if not any(c.isdigit() for c in cand):
                    continue
                try:
                    addr = ipaddress.IPv6Address(cand.split("%", 1)[0])
                except ValueError:
                    continue
                if addr.is_unspecified or addr.is_loopback:
                    continue
                out.append(Finding(m.start(), m.end(), "pii.ip", LABELS["ip"]))
        return out
