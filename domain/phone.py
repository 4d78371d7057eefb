"""Recipient phone numbers are personal data: validated here, and masked wherever they are shown."""

from __future__ import annotations

import re

_MOBILE = re.compile(r"1[3-9][0-9]{9}")


def is_mobile(s: str) -> bool:
    """A mainland China mobile number: 11 digits starting 13–19."""
    return bool(_MOBILE.fullmatch(s))


def mask_phone(s: str) -> str:
    """`13812345678` → `138****5678`; anything else shows at most its last two characters."""
    if len(s) == 11 and s.isascii() and s.isdigit():
        return f"{s[:3]}****{s[-4:]}"
    # Short junk may be most of a number: reveal nothing unless at least 5 characters stay hidden.
    return "****" + s[-2:] if len(s) > 6 else "****"


def last4(s: str) -> str:
    """The last four digits, the key a villager proves a parcel is theirs with."""
    return s[-4:]
