"""A local SMS gateway speaking Aliyun's SMS API (dysmsapi 2017-05-25: SendSms, QuerySendDetails,
ACS3-HMAC-SHA256 signatures) and pushing delivery reports the way Aliyun does: batched, late and
sometimes twice. The embedded runtime and the tests start it; production points at Aliyun.

It behaves like a provider under load: per-number rate limits, a configurable share of transient
failures, blacklisted numbers, and a log of every SMS it accepted (one JSON line each), which is
what the crash test counts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from domain.county import load_county
from domain.phone import is_mobile, mask_phone
from domain.sms import SmsPolicy, render, segments

log = logging.getLogger("gongpei.sms_gateway")
BEIJING = timezone(timedelta(hours=8))


@dataclass
class GatewayConfig:
    access_key_id: str
    access_key_secret: str
    log_path: Path
    callback_url: str | None = None
    transient_rate: float = 0.0        # share of SendSms answered isp.SYSTEM_ERROR
    per_number_per_minute: int = 5     # beyond it: isv.BUSINESS_LIMIT_CONTROL
    blacklist: frozenset[str] = frozenset()
    receipt_delay: tuple[float, float] = (0.2, 2.0)  # seconds, uniform
    repeat_rate: float = 0.2           # share of receipts pushed twice
    failed_receipt_suffix: str = "4444"  # numbers ending so get a failed delivery report
    latency: tuple[float, float] = (0.0, 0.0)
    seed: int | None = None


@dataclass
class Sent:
    biz_id: str
    phone: str
    out_id: str
    template_code: str
    text: str
    at: datetime


@dataclass
class State:
    config: GatewayConfig
    templates: dict[str, str]
    sign_names: frozenset[str]
    rng: random.Random
    sent: list[Sent] = field(default_factory=list)
    recent: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    receipts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    pushed: int = 0


def _templates(policy: SmsPolicy) -> dict[str, str]:
    return {code: getattr(policy.templates, key) for key, code in policy.template_codes.items()}


# ---------------------------------------------------------------------------- signature (ACS3)


def _enc(s: str) -> str:
    return quote(s, safe="~")


def verify_acs3(method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                body: bytes, key_id: str, secret: str) -> str | None:
    """None if the request carries a valid ACS3-HMAC-SHA256 signature by `key_id`; else why not."""
    auth = headers.get("authorization", "")
    if not auth.startswith("ACS3-HMAC-SHA256 "):
        return "missing or unsupported Authorization"
    fields = dict(part.split("=", 1) for part in auth[len("ACS3-HMAC-SHA256 "):].split(",")
                  if "=" in part)
    if fields.get("Credential") != key_id:
        return "unknown AccessKeyId"
    signed = fields.get("SignedHeaders", "").split(";")
    if "host" not in signed or "x-acs-date" not in signed:
        return "host and x-acs-date must be signed"
    payload_hash = hashlib.sha256(body).hexdigest()
    if headers.get("x-acs-content-sha256") != payload_hash:
        return "x-acs-content-sha256 does not match the body"
    canonical_query = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(query))
    canonical_headers = "".join(f"{h}:{headers.get(h, '').strip()}\n" for h in signed)
    canonical = "\n".join([method, path or "/", canonical_query, canonical_headers,
                           ";".join(signed), payload_hash])
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    expected = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields.get("Signature", "")):
        return "signature does not match"
    return None


# --------------------------------------------------------------------------------------- API


def _answer(code: str, message: str, status: int = 200, **extra: Any) -> JSONResponse:
    return JSONResponse({"Code": code, "Message": message,
                         "RequestId": f"{random.getrandbits(64):016X}", **extra}, status)


async def api(request: Request) -> JSONResponse:
    state: State = request.app.state.gw
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    query = list(request.query_params.multi_items())
    why = verify_acs3(request.method, request.url.path, query, headers, body,
                      state.config.access_key_id, state.config.access_key_secret)
    if why is not None:
        return _answer("SignatureDoesNotMatch", why, 400)
    lo, hi = state.config.latency
    if hi > 0:
        await asyncio.sleep(state.rng.uniform(lo, hi))
    params = dict(query)
    action = headers.get("x-acs-action") or params.get("Action")
    if action == "SendSms":
        return _send(state, params)
    if action == "QuerySendDetails":
        return _query(state, params)
    return _answer("InvalidAction.NotFound", f"unknown action {action!r}", 404)


def _send(state: State, p: dict[str, str]) -> JSONResponse:
    cfg = state.config
    phone = p.get("PhoneNumbers", "")
    if not is_mobile(phone):
        return _answer("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
    if p.get("SignName") not in state.sign_names:
        return _answer("isv.SMS_SIGNATURE_ILLEGAL", "签名不合法")
    template = state.templates.get(p.get("TemplateCode", ""))
    if template is None:
        return _answer("isv.SMS_TEMPLATE_ILLEGAL", "模板不合法")
    try:
        params = json.loads(p.get("TemplateParam", "{}"))
    except ValueError:
        return _answer("isv.INVALID_JSON_PARAM", "JSON参数不合法")
    if not isinstance(params, dict) or any("${" + k + "}" not in template for k in params):
        return _answer("isv.INVALID_JSON_PARAM", "JSON参数不合法")
    text = f"【{p['SignName']}】" + render(template, {k: str(v) for k, v in params.items()})
    if "${" in text:
        return _answer("isv.TEMPLATE_MISSING_PARAMETERS", "模板缺少变量")
    if phone in cfg.blacklist:
        return _answer("isv.BLACK_KEY_CONTROL_LIMIT", "黑名单管控")
    now = time.monotonic()
    window = state.recent[phone]
    while window and window[0] < now - 60:
        window.popleft()
    if len(window) >= cfg.per_number_per_minute:
        return _answer("isv.BUSINESS_LIMIT_CONTROL", "业务限流")
    if state.rng.random() < cfg.transient_rate:
        return _answer("isp.SYSTEM_ERROR", "系统错误")
    window.append(now)
    biz_id = f"{len(state.sent) + 1:06d}^{state.rng.getrandbits(40):010d}"
    sent = Sent(biz_id, phone, p.get("OutId", ""), p["TemplateCode"], text, datetime.now(UTC))
    state.sent.append(sent)
    with cfg.log_path.open("a", encoding="utf-8") as f:  # the gateway's own record, line by line
        f.write(json.dumps({"at": sent.at.isoformat(), "biz_id": biz_id, "phone": phone,
                            "out_id": sent.out_id, "template": sent.template_code, "text": text,
                            "segments": segments(text)}, ensure_ascii=False) + "\n")
    _schedule_receipts(state, sent)
    return _answer("OK", "OK", BizId=biz_id)


def _schedule_receipts(state: State, sent: Sent) -> None:
    cfg = state.config
    if cfg.callback_url is None:
        return
    ok = not sent.phone.endswith(cfg.failed_receipt_suffix)
    report = {
        "phone_number": sent.phone, "send_time": sent.at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
        "report_time": None, "success": ok, "err_code": "DELIVERED" if ok else "MK:0001",
        "err_msg": "用户接收成功" if ok else "空号", "sms_size": str(segments(sent.text)),
        "biz_id": sent.biz_id, "out_id": sent.out_id,
    }
    due = time.monotonic() + state.rng.uniform(*cfg.receipt_delay)
    state.receipts.append((due, report))
    if state.rng.random() < cfg.repeat_rate:
        state.receipts.append((due + state.rng.uniform(*cfg.receipt_delay), report))


def _query(state: State, p: dict[str, str]) -> JSONResponse:
    phone, day = p.get("PhoneNumber", ""), p.get("SendDate", "")
    size = max(1, min(50, int(p.get("PageSize", "10") or 10)))
    page = max(1, int(p.get("CurrentPage", "1") or 1))
    matches = [s for s in state.sent if s.phone == phone
               and s.at.astimezone(BEIJING).strftime("%Y%m%d") == day
               and (not p.get("BizId") or s.biz_id == p["BizId"])]
    chunk = matches[(page - 1) * size: page * size]
    return _answer("OK", "OK", TotalCount=str(len(matches)), SmsSendDetailDTOs={"SmsSendDetailDTO": [{
        "PhoneNum": s.phone, "SendStatus": 3, "ErrCode": "DELIVERED", "TemplateCode": s.template_code,
        "Content": s.text, "SendDate": s.at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
        "ReceiveDate": "", "OutId": s.out_id} for s in chunk]})


async def sent_log(request: Request) -> JSONResponse:
    """What the gateway accepted (for tests and the demo), phones masked."""
    state: State = request.app.state.gw
    return JSONResponse({"sent": [{"biz_id": s.biz_id, "phone": mask_phone(s.phone),
                                   "out_id": s.out_id, "text": s.text} for s in state.sent],
                         "receipts_pending": len(state.receipts), "receipts_pushed": state.pushed})


async def _push_receipts(state: State) -> None:
    """Deliver due reports in batches of up to 100, as Aliyun's HTTP push does; a failed push
    is tried again later."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            await asyncio.sleep(0.3)
            now = time.monotonic()
            due = [r for r in state.receipts if r[0] <= now][:100]
            if not due or state.config.callback_url is None:
                continue
            batch = [dict(r[1], report_time=datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S"))
                     for r in due]
            try:
                resp = await client.post(state.config.callback_url, json=batch)
                accepted = resp.status_code == 200
            except httpx.HTTPError:
                accepted = False
            if accepted:
                for r in due:
                    state.receipts.remove(r)
                state.pushed += len(due)
            else:
                await asyncio.sleep(1.0)


def _reload(log_path: Path) -> list[Sent]:
    """What an earlier run of this gateway accepted: a provider does not forget its messages
    when it restarts, so QuerySendDetails still finds them."""
    if not log_path.exists():
        return []
    out = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
            out.append(Sent(d["biz_id"], d["phone"], d["out_id"], d["template"], d["text"],
                            datetime.fromisoformat(d["at"])))
        except (ValueError, KeyError):
            log.warning("skipping an unreadable line of %s", log_path.name)  # a torn last line
    return out


def create_gateway(config: GatewayConfig, policy: SmsPolicy) -> Starlette:
    state = State(config, _templates(policy), frozenset({policy.sign_name}),
                  random.Random(config.seed))
    state.sent = _reload(config.log_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_push_receipts(state))
        try:
            yield
        finally:
            task.cancel()

    app = Starlette(routes=[Route("/", api, methods=["GET", "POST"]),
                            Route("/_gateway/sent", sent_log, methods=["GET"])], lifespan=lifespan)
    app.state.gw = state
    return app


def main(argv: list[str] | None = None) -> None:
    import os

    import uvicorn

    parser = argparse.ArgumentParser(description="A local SMS gateway speaking Aliyun's SMS API")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--county", required=True, help="the county file whose [sms] templates it knows")
    parser.add_argument("--log", required=True, help="where to append accepted SMS (JSON lines)")
    parser.add_argument("--callback", help="URL delivery reports are pushed to")
    parser.add_argument("--transient-rate", type=float, default=0.0)
    parser.add_argument("--per-number-per-minute", type=int, default=5)
    parser.add_argument("--blacklist", default="")
    parser.add_argument("--receipt-delay", default="0.2,2.0", help="min,max seconds")
    parser.add_argument("--repeat-rate", type=float, default=0.2)
    parser.add_argument("--latency", default="0,0", help="min,max seconds added to each call")
    parser.add_argument("--seed", type=int)
    a = parser.parse_args(argv)
    county = load_county(a.county)
    config = GatewayConfig(
        access_key_id=os.environ["GONGPEI_SMS_ACCESS_KEY_ID"],
        access_key_secret=os.environ["GONGPEI_SMS_ACCESS_KEY_SECRET"],
        log_path=Path(a.log), callback_url=a.callback, transient_rate=a.transient_rate,
        per_number_per_minute=a.per_number_per_minute,
        blacklist=frozenset(x for x in a.blacklist.split(",") if x),
        receipt_delay=tuple(map(float, a.receipt_delay.split(","))),  # type: ignore[arg-type]
        repeat_rate=a.repeat_rate,
        latency=tuple(map(float, a.latency.split(","))),  # type: ignore[arg-type]
        seed=a.seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_gateway(config, county.sms or SmsPolicy()), host="127.0.0.1", port=a.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
