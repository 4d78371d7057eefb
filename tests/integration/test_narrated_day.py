"""One day in 海城市, told as the county logistics manager would tell it.

Mrs Wang of 王家村 ordered twice: one parcel comes by ZTO, one by YTO. Both brands' manifests arrive
in the morning; both parcels are scanned in at the county centre and loaded onto the 08:00 run to
西柳镇, which leaves two and a half hours late. They reach the township station at 19:00 — half an
hour past the twelve hours the county promises for that leg, and the run's late departure is why.
They go out to the village the same evening and are shelved at the 王家村 service point at 21:00,
each with a pickup code. Mrs Wang gets one SMS naming both codes, the provider reports it
delivered, and she collects both parcels at 21:30.

Checked, on the real embedded stack: each brand's tracking, the on-time legs and the cause of the
late one, what each brand owes for the day (fees for its own parcel, its share of the run), and
the SMS log."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from domain.county import County
from entrypoints.platform import Platform
from loadtest.traffic import county_time, envelope, waybill_for
from tests.conftest import bearer, wait_for
from tests.integration.test_sms import gateway_sent, post

VILLAGE, TOWNSHIP, CENTRE = "VIL-XILIU-01", "TWN-XILIU", "CTY-HAICHENG"


def get(client: httpx.Client, token: str, path: str, **params: Any) -> Any:
    r = client.get(path, headers=bearer(token), params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_household_day_with_two_brands_one_late_run_one_sms_and_a_pickup(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    rng = random.Random()
    # Yesterday, in county time: every clock below is the events' own (occurred_at).
    day = county_time(county, datetime.now(UTC)).date() - timedelta(days=1)
    tz = county_time(county, datetime.now(UTC)).tzinfo

    def at(hh: int, mm: int = 0) -> datetime:
        return datetime(day.year, day.month, day.day, hh, mm, tzinfo=tz)

    phone = f"136{rng.randrange(10**8):08d}"
    zto, yto = waybill_for("ZTO", rng), waybill_for("YTO", rng)
    trip = f"T-{day:%m%d}-XILIU-AM-{rng.randrange(10**6):06d}"
    parcels = {"ZTO": zto, "YTO": yto}

    def scan(brand: str, hh: int, mm: int, action: str, node: str, **extra: Any) -> dict[str, Any]:
        return envelope("parcel.scanned", 1, at(hh, mm), brand, "op-narrator",
                        {"waybill": parcels[brand], "action": action, "node_id": node, **extra})

    # 06:00 Both brands' manifests arrive: the same phone, the same village point.
    for brand, wb in parcels.items():
        [r] = post(client, tokens[f"{brand}-system"], [envelope(
            "parcel.registered", 2, at(6), brand, "manifest",
            {"waybill": wb, "recipient_phone": phone, "destination_village": VILLAGE,
             "weight_g": 900})])["results"]
        assert r["status"] == "accepted", r
    # 06:30 scanned in at the county centre; 07:40 loaded onto the 08:00 run; it leaves at 10:30.
    day_scans = [scan(b, 6, 30, "received", CENTRE) for b in parcels]
    day_scans += [scan(b, 7, 40, "loaded", CENTRE, trip_id=trip) for b in parcels]
    day_scans.append(envelope("vehicle.departed", 1, at(10, 30), "ZTO", "driver-li", {
        "trip_id": trip, "route_id": "R-XILIU", "run_id": "R-XILIU-AM", "node_id": CENTRE,
        "scheduled_at": at(8).isoformat()}))
    # 19:00 at the township station (due 18:30); 20:00 out to the village; 21:00 on the shelf.
    day_scans += [scan(b, 19, 0, "arrived", TOWNSHIP) for b in parcels]
    day_scans += [scan(b, 20, 0, "out_for_delivery", TOWNSHIP) for b in parcels]
    day_scans += [scan(b, 21, 0, "stored", VILLAGE) for b in parcels]
    before = len(gateway_sent(platform))
    assert post(client, tokens["scanner"], day_scans)["accepted"] == len(day_scans)

    # Mrs Wang gets one SMS for both parcels, with both pickup codes, and it is delivered.
    def delivered_sms() -> dict[str, Any] | None:
        views = {b: get(client, tokens["manager"], f"/v1/parcels/{wb}/sms")
                 for b, wb in parcels.items()}
        sms = [v["sms"] for v in views.values()]
        ready = all(s and s[-1]["state"] == "delivered" for s in sms)
        return views if ready else None

    views = wait_for(delivered_sms, 60, "the arrival SMS delivered")
    [only] = {v["sms"][0]["sms_id"] for v in views.values()}
    codes = {b: v["arrival"]["pickup_code"] for b, v in views.items()}
    text = views["ZTO"]["sms"][0]["text"]
    assert all(codes.values()) and all(code in text for code in codes.values()), text
    assert "2件包裹" in text and "西柳王家村服务点" in text
    assert views["ZTO"]["sms"][0]["phone_masked"] == f"{phone[:3]}****{phone[-4:]}"
    sent = [s for s in gateway_sent(platform)[before:] if s["phone"] == phone]
    assert [s["out_id"] for s in sent] == [only]  # one SMS reached the provider, once

    # 21:30 she collects both with their codes.
    assert post(client, tokens["scanner"], [scan(b, 21, 30, "delivered", VILLAGE)
                                            for b in parcels])["accepted"] == 2

    # Tracking: each brand sees its own parcel delivered, with the whole chain; not the other's.
    for brand, wb in parcels.items():
        own = tokens[f"{brand}-brand"]
        view = wait_for(lambda own=own, wb=wb: (v := get(client, own, f"/v1/parcels/{wb}"))
                        and v["status"] == "delivered" and v, 15, f"{brand}'s parcel delivered")
        assert [e["action"] for e in view["timeline"] if e["action"]] == [
            "received", "loaded", "arrived", "out_for_delivery", "stored", "delivered"]
        assert view["pickup_code"] == codes[brand] and not view["misrouted"]
        other = parcels["YTO" if brand == "ZTO" else "ZTO"]
        assert client.get(f"/v1/parcels/{other}", headers=bearer(own)).status_code == 404

    # On time: county → township late by 30 minutes because the run left late; the rest on time.
    def legs() -> dict[str, dict[str, Any]] | None:
        b = get(client, tokens["manager"], "/v1/sla/breaches", day=day.isoformat(),
                leg="county_to_township", route="R-XILIU")
        mine = {x["waybill"]: x for x in b["breaches"] if x["waybill"] in parcels.values()}
        return mine if len(mine) == 2 else None

    late = wait_for(legs, 15, "both parcels' late county-to-township leg")
    for leg in late.values():
        assert leg["cause"] == "run_departed_late" and leg["minutes_over"] == 30, leg
    rates = get(client, tokens["ZTO-brand"], "/v1/sla/rates", **{
        "from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat(),
        "village": VILLAGE})["rates"]
    done = {r["leg"]: r for r in rates if r["day"] == day.isoformat()}
    assert done["township_to_village"]["late"] == 0 and done["centre_to_village"]["late"] == 0

    # Finance: each brand owes the fees of its own parcel and half the run, down to the scans.
    period = f"{day:%Y-%m}"

    def shares() -> dict[str, int] | None:
        t = client.get(f"/v1/trips/{trip}", headers=bearer(tokens["finance"]))
        if t.status_code != 200:
            return None
        got = {ln["brand"]: ln["fen"] for ln in t.json()["lines"]
               if ln["account"].startswith("brand:")}
        return got if set(got) == {"ZTO", "YTO"} else None

    split = wait_for(shares, 30, "the run's cost shared by the two brands")
    assert abs(split["ZTO"] - split["YTO"]) <= 1  # by parcel count, largest remainder
    for brand, wb in parcels.items():
        st = get(client, tokens[f"{brand}-finance"], f"/v1/statements/{period}/{brand}")
        mine = [ln for ln in st["lines"] if wb in str(ln)]
        assert mine and all(ln["event_ids"] for ln in mine)
        other = parcels["YTO" if brand == "ZTO" else "ZTO"]
        assert not [ln for ln in st["lines"] if other in str(ln)]
