"""A statement as CSV or XLSX: the same figures as its JSON, in fen (integers) and yuan (text)."""

from __future__ import annotations

import csv
import io
from typing import Any

from openpyxl import Workbook

SUMMARY_HEADER = ["section", "item", "count", "fen", "yuan"]
LINE_HEADER = ["entry_id", "posting_date", "kind", "ref", "fen", "adjusts_period", "event_ids"]


def summary_rows(st: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = [["statement", f"{st['brand']} {st['period']} ({st['status']})", "", "", ""]]
    rows += [["parcels", tier, n, "", ""] for tier, n in st["parcels_by_tier"].items()]
    rows += [["total", kind, "", v["fen"], v["yuan"]] for kind, v in st["totals"].items()]
    rows += [["trip share", t["route"], t["trips"], t["fen"], t["yuan"]] for t in st["trip_shares"]]
    up = st["upward"]
    if up["parcels"] or up["fen"]:
        what = f"{up['parcels']} parcels, {up['kg']} kg, {up['cold_chain_parcels']} cold chain"
        rows.append(["upward", what, up["parcels"], up["fen"], up["yuan"]])
    rows += [["adjustment", f"{a['kind']} for {a['adjusts_period']}", "", a["fen"], a["yuan"]]
             for a in st["adjustments"]]
    rows.append(["net", "owed to the operator", "", st["net"]["fen"], st["net"]["yuan"]])
    return rows


def line_rows(st: dict[str, Any]) -> list[list[Any]]:
    return [[ln["entry_id"], ln["posting_date"], ln["kind"], ln["ref"] or "", ln["amount_fen"],
             ln["adjusts_period"] or "", " ".join(ln["event_ids"])] for ln in st["lines"]]


def to_csv(st: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(SUMMARY_HEADER)
    w.writerows(summary_rows(st))
    w.writerow([])
    w.writerow(LINE_HEADER)
    w.writerows(line_rows(st))
    return out.getvalue()


def to_xlsx(st: dict[str, Any]) -> bytes:
    wb = Workbook()
    summary = wb.active
    assert summary is not None
    summary.title = "Statement"
    summary.append(SUMMARY_HEADER)
    for row in summary_rows(st):
        summary.append(row)
    lines = wb.create_sheet("Lines")
    lines.append(LINE_HEADER)
    for row in line_rows(st):
        lines.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
