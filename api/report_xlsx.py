"""The monthly statistics report as an XLSX workbook: a cover sheet and one sheet per table, with
Chinese headings and totals rows; the figures are the JSON answer's, money in integer fen (yuan
beside it as text)."""

from __future__ import annotations

import io
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.worksheet.worksheet import Worksheet

from domain.money import Fen

TOTAL = "合计"
SHEETS = ("封面", "品牌业务量", "节点业务量", "村级覆盖", "时效", "问题件", "共配降本")
TIERS = {"county": "县级共配中心", "township": "乡镇站", "village": "村服务点"}
DIRECTIONS = {"down": "下行", "up": "上行"}
BRAND_HEADER = ["品牌", "面单登记", "下行处理", "到村（入库或签收）", "签收", "上行收寄", "上行到县"]
BRAND_COLS = ("registered", "down", "to_village", "delivered", "up", "up_to_county")
NODE_HEADER = ["节点编号", "节点名称", "层级", "所属乡镇", "下行件数", "上行件数"]
COVERAGE_HEADER = ["乡镇编号", "乡镇", "村服务点数", "列入定时班线", "班线开行覆盖", "班车到达扫描",
                   "有包裹到村", "覆盖率（‰）"]
COVERAGE_COLS = ("villages", "on_timetable", "run_covered", "run_arrived", "parcels_reached",
                 "coverage_permille")
ON_TIME_HEADER = ["环节", "环节编号", "方向", "准时", "超时", "其中：未完成已超时", "准时率（‰）"]
PROBLEM_HEADER = ["原因", "原因代码", "问题件数", "已完结（签收或退回）"]
NOTES_ZH = (
    ("上行（农产品上行）：首次扫描为在村服务点收寄（received）的包裹，与时效“村收寄→县仓”环节同一规则；"
    "其余包裹为下行。"),
    "节点业务量：当月在该节点有扫描的包裹数（去重）；一件包裹经多个节点各计一次，节点合计不等于包裹数。",
    ("村级覆盖：“班线开行覆盖”为所在线路当月至少发车一次的村服务点（覆盖率按此计算）；“班车到达扫描”为"
    "班车到达该村有扫描；“有包裹到村”为当月有包裹完成乡镇站→村服务点环节。"),
    "时效：与同月、同一截至时间的 /v1/sla/rates 一致；“超时”含截至“时效截至”时仍未完成且已过时限的环节。",
    "金额：整数“分”，“元”为文本；比率为千分比（‰）。",
)
ASSUMPTION_ZH = ("共配降本假设：若不共配，每个品牌在其搭乘的每个班次都各自派车，成本按账本记载的该班次成本"
                 "（县配置 [settlement] trip_cost：每班 {fixed} 分 + 线路每公里 {per_km} 分）。"
                 "节省 = 各自派车成本 − 共配实际成本；空载班次只有成本、没有节省。")
NO_PERIOD_ZH = "本县结算期不是自然月（或未配置结算），共配降本留空。"
# Upward produce (农产品上行): a sheet of its own, in a month that had any (hand-ins, or figures of
# the perishable clocks); the JSON answer always has the section.
PRODUCE_SHEET = "上行农产品"
PRODUCE_HEADER = ["项目", "分类", "件数", "重量（克）", "重量（千克）"]
SAVING_HEADER = ["品牌", "共配车次", "分摊费用（分）", "分摊费用（元）", "自行派车成本（分）",
                 "节省（分）", "节省（元）"]


def report_xlsx(report: dict[str, Any]) -> bytes:
    """The workbook for one month's report."""
    wb = Workbook()
    cover = wb.active
    assert cover is not None
    cover.title = SHEETS[0]
    _cover(cover, report)
    _brands(_sheet(wb, SHEETS[1], BRAND_HEADER), report["volumes"])
    _nodes(_sheet(wb, SHEETS[2], NODE_HEADER), report["volumes"])
    _coverage(_sheet(wb, SHEETS[3], COVERAGE_HEADER), report["coverage"])
    _on_time(_sheet(wb, SHEETS[4], ON_TIME_HEADER), report["on_time"])
    _problems(_sheet(wb, SHEETS[5], PROBLEM_HEADER), report["problems"])
    _saving(_sheet(wb, SHEETS[6], SAVING_HEADER), report["cost_saving"])
    if has_upward_produce(report):
        _produce(_sheet(wb, PRODUCE_SHEET, PRODUCE_HEADER), report["upward"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _sheet(wb: Workbook, title: str, header: list[str]) -> Worksheet:
    ws = wb.create_sheet(title)
    ws.append(header)
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for i, text in enumerate(header):
        ws.column_dimensions[chr(ord("A") + i)].width = max(10, 2 * len(text) + 2)
    return ws


def _bold_last(ws: Worksheet) -> None:
    for cell in ws[ws.max_row]:
        cell.font = Font(bold=True)


def _cover(ws: Worksheet, r: dict[str, Any]) -> None:
    ws.append([f"{r['county']} 共配物流 月度统计上报"])
    ws["A1"].font = Font(bold=True, size=14)
    for label, value in (("县（市）", f"{r['county']}（{r['county_code']}）"),
                         ("统计月份", r["month"]),
                         ("统计期间", f"{r['first_day']} 至 {r['last_day']}（县域时间 UTC{r['utc_offset']}）"),
                         ("生成时间", r["generated_at"]),
                         ("时效截至", r["as_of"]),
                         ("结算期", r["cost_saving"]["period"] or "无（结算期不是自然月）"),
                         ("结算期状态", {"open": "未结账", "closed": "已结账"}.get(
                             r["cost_saving"]["status"] or "", "—"))):
        ws.append([label, value])
    ws.append([])
    ws.append(["说明与假设"])
    ws.cell(ws.max_row, 1).font = Font(bold=True)
    rule = r["cost_saving"]["trip_cost"] or {"fixed_fen": "?", "per_km_fen": "?"}
    notes_zh = [*NOTES_ZH, ASSUMPTION_ZH.format(fixed=rule["fixed_fen"], per_km=rule["per_km_fen"])]
    if r["cost_saving"]["period"] is None:
        notes_zh.append(NO_PERIOD_ZH)
    for note in notes_zh:
        ws.append(["", note])
    ws.append(["Notes (API)"])
    for note in [*r["notes"], r["cost_saving"]["assumption"]]:
        ws.append(["", note])
    ws.append([])
    ws.append(["工作表", ", ".join(SHEETS[1:])])
    ws.column_dimensions["A"].width = 14
    ws.column_dimensions["B"].width = 100


def _brands(ws: Worksheet, v: dict[str, Any]) -> None:
    for row in v["by_brand"]:
        ws.append([row["brand"], *(row[c] for c in BRAND_COLS)])
    ws.append([TOTAL, *(v["brand_total"][c] for c in BRAND_COLS)])
    _bold_last(ws)


def _nodes(ws: Worksheet, v: dict[str, Any]) -> None:
    for row in v["by_node"]:
        ws.append([row["node_id"], row["name"] or "", TIERS.get(row["tier"] or "", "未知节点"),
                   row["township"] or "", row["down"], row["up"]])
    ws.append([f"{TOTAL}（节点件次，一件经多个节点各计一次）", "", "", "",
               sum(row["down"] for row in v["by_node"]), sum(row["up"] for row in v["by_node"])])
    _bold_last(ws)


def _coverage(ws: Worksheet, c: dict[str, Any]) -> None:
    for row in c["by_township"]:
        ws.append([row["township"], row["name"], *(row[k] for k in COVERAGE_COLS)])
    ws.append([TOTAL, "全县", *(c[k] for k in COVERAGE_COLS)])
    _bold_last(ws)


def _on_time(ws: Worksheet, t: dict[str, Any]) -> None:
    for leg in t["legs"]:
        ws.append([leg["name"], leg["leg"], DIRECTIONS.get(leg["direction"], leg["direction"]),
                   leg["on_time"], leg["late"], leg["overdue_open"], leg["rate_permille"]])
    on, late = sum(x["on_time"] for x in t["legs"]), sum(x["late"] for x in t["legs"])
    ws.append([f"{TOTAL}（各环节）", "", "", on, late, sum(x["overdue_open"] for x in t["legs"]),
               on * 1000 // (on + late) if on + late else None])
    _bold_last(ws)
    runs = t["runs"]
    ws.append([])
    ws.append(["定时班车", "班车发车与到达", f"±{runs['tolerance_minutes']} 分钟内为准点",
               runs["punctual"], runs["moves"] - runs["punctual"], "", runs["rate_permille"]])


def _problems(ws: Worksheet, p: dict[str, Any]) -> None:
    for row in p["by_reason"]:
        ws.append([row["label"], row["reason"], row["parcels"], row["closed"]])
    ws.append([TOTAL, "", p["total"], p["closed"]])
    _bold_last(ws)


def _saving(ws: Worksheet, s: dict[str, Any]) -> None:
    for row in s["by_brand"]:
        ws.append([row["brand"], row["trips"], row["shares_fen"], Fen(row["shares_fen"]).yuan(),
                   row["own_vehicle_fen"], row["saving_fen"], Fen(row["saving_fen"]).yuan()])
    un = s["unallocated_fen"]
    ws.append(["空载车次（运营方承担）", s["empty_trips"], un, Fen(un).yuan(), 0, -un, Fen(-un).yuan()])
    ws.append([TOTAL, s["trips"], s["shared_cost_fen"], Fen(s["shared_cost_fen"]).yuan(),
               s["own_vehicles_fen"], s["saving_fen"], Fen(s["saving_fen"]).yuan()])
    _bold_last(ws)
    ws.append([])
    for label, value in (("共配车次", s["trips"]), ("多品牌共享车次", s["shared_trips"]),
                         ("共配实际成本（分）", s["shared_cost_fen"]),
                         ("各品牌自行派车成本（分）", s["own_vehicles_fen"]),
                         ("节省（分）", s["saving_fen"]),
                         ("节省率（‰）", s["saving_permille"]),
                         ("以前期间调整（分，不计入节省）", s["adjustments_fen"]),
                         ("假设", s["assumption"])):
        ws.append([label, value])


def has_upward_produce(report: dict[str, Any]) -> bool:
    """Whether the month had upward produce: hand-ins, or a perishable clock with a figure."""
    u = report["upward"]
    return bool(u["parcels"] or any(u[k]["on_time"] + u[k]["late"]
                                    for k in ("cold_store", "cold_chain"))
                or u["air_cutoff"]["made"] + u["air_cutoff"]["missed"])


def _produce(ws: Worksheet, u: dict[str, Any]) -> None:
    for row in u["by_class"]:
        ws.append(["按品类", row["name"] or ("非生鲜" if row["class"] is None else row["class"]),
                   row["parcels"], row["weight_g"], round(row["weight_g"] / 1000, 1)])
    for row in u["by_brand"]:
        ws.append(["按品牌", row["brand"], row["parcels"], row["weight_g"],
                   round(row["weight_g"] / 1000, 1)])
    ws.append([TOTAL, f"其中生鲜 {u['perishable']} 件", u["parcels"], u["weight_g"], u["kg"]])
    _bold_last(ws)
    ws.append([])
    ws.append(["时效", "", "准时", "超时（含未完成已超时）", "准时率（‰）"])
    _bold_last(ws)
    for label, leg in (("村收寄→县冷库", u["cold_store"]), ("冷链合规（脱冷时长）", u["cold_chain"])):
        ws.append([label, "", leg["on_time"], leg["late"], leg["rate_permille"]])
    air = u["air_cutoff"]
    ws.append(["航空截载", "赶上 / 未赶上", air["made"], air["missed"], air["rate_permille"]])
