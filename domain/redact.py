"""The one place that keeps phone-like strings out of what the API echoes back."""

from __future__ import annotations

import re

from domain.phone import mask_phone

# Any script's digits (Python's \d is Unicode-aware): a device may send a phone in fullwidth or
# Arabic-Indic digits, and masking errs wide. Seven is where a partial mobile number starts to
# identify someone; waybills and ids echoed in messages are masked too, which costs nothing.
_DIGIT_RUN = re.compile(r"\d{7,}")
_MOBILE_ALONE = re.compile(r"(?<![0-9])1[3-9][0-9]{9}(?![0-9])")


def mask_digit_runs(text: str) -> str:
    """`text` with every run of 7+ digits masked (`13812345678` → `138****5678`)."""
    return _DIGIT_RUN.sub(lambda m: mask_phone(m.group()), text)


def mask_optional(text: str | None) -> str | None:
    """`mask_digit_runs` for optional fields (None stays None)."""
    return None if text is None else mask_digit_runs(text)


def mask_lone_mobiles(text: str) -> str:
    """`text` with every mainland mobile number that stands alone (no digit either side)
    masked: for showing events whose waybills and ids must stay readable (`gongpei topic`)."""
    return _MOBILE_ALONE.sub(lambda m: mask_phone(m.group()), text)
