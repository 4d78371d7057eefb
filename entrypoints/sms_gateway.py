"""A local SMS gateway speaking the APIs of Aliyun SMS (dysmsapi 2017-05-25: SendSms,
QuerySendDetails, ACS3-HMAC-SHA256 signatures) and Tencent Cloud SMS (sms 2021-01-11: SendSms,
PullSmsSendStatusByPhoneNumber, TC3-HMAC-SHA256), and pushing delivery reports the way each does:
batched, late and sometimes twice. The embedded runtime and the tests start it; production points
at the providers themselves.

It behaves like a provider under load: per-number rate limits, a configurable share of transient
failures (or always, for numbers with a given prefix), blacklisted numbers, and a log of every SMS
it accepted (one JSON line each), which is what the crash test counts, and which it reads back when
restarted, as a provider does not forget what it sent."""

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

from domain.phone import is_mobile, mask_phone
from domain.sms import SmsPolicy, render, segments, template_keys
from infra.county_file import load_county

log = logging.getLogger("gongpei.sms_gateway")
BEIJING = timezone(timedelta(hours=8))
ALIYUN, TENCENT = "aliyun", "tencent"


@dataclass
class GatewayConfig:
    access_key_id: str                 # Aliyun's AccessKeyId and secret
    access_key_secret: str
    log_path: Path
    tencent_secret_id: str = ""        # Tencent's SecretId and SecretKey
    tencent_secret_key: str = ""
    callback_url: str | None = None    # where Aliyun-style reports go
    tencent_callback_url: str | None = None
    tencent_app_id: str = "1400000001"
    transient_rate: float = 0.0        # share of SendSms answered with a system error
    fail_prefix: str = ""              # numbers starting so always get a system error
    per_number_per_minute: int = 5     # beyond it: a rate-limit error
    blacklist: frozenset[str] = frozenset()
    receipt_delay: tuple[float, float] = (0.2, 2.0)  # seconds, uniform
    repeat_rate: float = 0.2           # share of receipts pushed twice
    failed_receipt_suffix: str = "4444"  # numbers ending so get a failed delivery report
    latency: tuple[float, float] = (0.0, 0.0)  # seconds, uniform: Aliyun/Tencent ~0.1–0.3
    qps: float = 0.0                   # SendSms calls a second the account may make; 0: no limit
    seed: int | None = None


@dataclass
class Sent:
    message_id: str   # Aliyun BizId / Tencent SerialNo
    phone: str
    out_id: str       # Aliyun OutId / Tencent SessionContext
    template: str
    text: str
    at: datetime
    dialect: str = ALIYUN


@dataclass
class AccountRate:
    """The account's SendSms rate as a provider enforces it: a bucket of one second's calls,
    refilled continuously; a call that finds it empty is refused (and costs nothing)."""

    qps: float
    tokens: float = -1.0
    at: float = field(default_factory=time.monotonic)

    def allow(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens = self.qps
        self.tokens = min(self.qps, self.tokens + (now - self.at) * self.qps)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class State:
    config: GatewayConfig
    policy: SmsPolicy
    rng: random.Random
    sent: list[Sent] = field(default_factory=list)
    recent: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    receipts: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    pushed: int = 0
    throttled: int = 0   # SendSms refused for the account's rate
    rate: AccountRate | None = None

    def __post_init__(self) -> None:
        if self.config.qps > 0:
            self.rate = AccountRate(self.config.qps)

    def template(self, dialect: str, template_id: str) -> str | None:
        ids = self.policy.template_codes if dialect == ALIYUN else self.policy.tencent_template_ids
        for key, tid in ids.items():
            if tid == template_id:
                return str(getattr(self.policy.templates, key))
        return None


# ------------------------------------------------------------------------------- signatures


def _enc(s: str) -> str:
    return quote(s, safe="~")


def _auth_fields(auth: str, scheme: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (part.partition("=") for part in
            auth[len(scheme) + 1:].split(",")) if v}


def verify_acs3(method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                body: bytes, key_id: str, secret: str) -> str | None:
    """None if the request carries a valid ACS3-HMAC-SHA256 signature by `key_id`; else why not."""
    auth = headers.get("authorization", "")
    if not auth.startswith("ACS3-HMAC-SHA256 "):
        return "missing or unsupported Authorization"
    fields = _auth_fields(auth, "ACS3-HMAC-SHA256")
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


def verify_tc3(method: str, path: str, query: str, headers: dict[str, str], body: bytes,
               secret_id: str, secret_key: str, now: float) -> str | None:
    """None if the request carries a valid TC3-HMAC-SHA256 signature by `secret_id`, made
    within five minutes of `now`; else why not."""
    auth = headers.get("authorization", "")
    if not auth.startswith("TC3-HMAC-SHA256 "):
        return "missing or unsupported Authorization"
    if not secret_id:
        return "this gateway has no Tencent credentials"
    fields = _auth_fields(auth, "TC3-HMAC-SHA256")
    key_id, _, scope = fields.get("Credential", "").partition("/")
    if key_id != secret_id:
        return "unknown SecretId"
    day, _, rest = scope.partition("/")
    service = rest.split("/")[0]
    try:
        stamp = int(headers.get("x-tc-timestamp", ""))
    except ValueError:
        return "X-TC-Timestamp is missing"
    if abs(now - stamp) > 300 or datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d") != day:
        return "the signature has expired or names another day"
    signed = fields.get("SignedHeaders", "").split(";")
    if "host" not in signed or "content-type" not in signed:
        return "content-type and host must be signed"
    canonical_headers = "".join(f"{h}:{headers.get(h, '').strip()}\n" for h in signed)
    canonical = "\n".join([method, path or "/", query, canonical_headers, ";".join(signed),
                           hashlib.sha256(body).hexdigest()])
    to_sign = "\n".join(["TC3-HMAC-SHA256", str(stamp), scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("TC3" + secret_key).encode()
    for part in (day, service, "tc3_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields.get("Signature", "")):
        return "signature does not match"
    return None


# --------------------------------------------------------------------------------------- API


class Refused(Exception):
    """A SendSms the provider answers with an error code (per dialect, from the same cause)."""

    def __init__(self, aliyun: str, tencent: str, message: str) -> None:
        super().__init__(message)
        self.codes = {ALIYUN: aliyun, TENCENT: tencent}


def _accept(state: State, dialect: str, phone: str, sign: str | None, template_id: str,
            params: dict[str, str], out_id: str) -> Sent:
    """The provider's checks, in its order; the accepted SMS is logged before the answer."""
    cfg = state.config
    if not is_mobile(phone):
        raise Refused("isv.MOBILE_NUMBER_ILLEGAL", "InvalidParameterValue.IncorrectPhoneNumber",
                      "非法手机号")
    if sign != state.policy.sign_name:
        raise Refused("isv.SMS_SIGNATURE_ILLEGAL", "FailedOperation.SignatureIncorrectOrUnapproved",
                      "签名不合法")
    template = state.template(dialect, template_id)
    if template is None:
        raise Refused("isv.SMS_TEMPLATE_ILLEGAL", "FailedOperation.TemplateIncorrectOrUnapproved",
                      "模板不合法")
    if any("${" + k + "}" not in template for k in params):
        raise Refused("isv.INVALID_JSON_PARAM", "InvalidParameterValue.TemplateParameterFormatError",
                      "参数不合法")
    text = f"【{sign}】" + render(template, params)
    if "${" in text:
        raise Refused("isv.TEMPLATE_MISSING_PARAMETERS", "FailedOperation.MissingTemplateToModify",
                      "模板缺少变量")
    if phone in cfg.blacklist:
        raise Refused("isv.BLACK_KEY_CONTROL_LIMIT", "FailedOperation.PhoneNumberInBlacklist",
                      "黑名单管控")
    now = time.monotonic()
    window = state.recent[phone]
    while window and window[0] < now - 60:
        window.popleft()
    if len(window) >= cfg.per_number_per_minute:
        raise Refused("isv.BUSINESS_LIMIT_CONTROL", "LimitExceeded.PhoneNumberThirtySecondLimit",
                      "业务限流")
    if (cfg.fail_prefix and phone.startswith(cfg.fail_prefix)) or state.rng.random() < cfg.transient_rate:
        raise Refused("isp.SYSTEM_ERROR", "InternalError.SendAndRecvFail", "系统错误")
    window.append(now)
    n = len(state.sent) + 1
    message_id = (f"{n:06d}^{state.rng.getrandbits(40):010d}" if dialect == ALIYUN
                  else f"2433:{n:08d}{state.rng.getrandbits(32):010d}")
    sent = Sent(message_id, phone, out_id, template_id, text, datetime.now(UTC), dialect)
    state.sent.append(sent)
    with cfg.log_path.open("a", encoding="utf-8") as f:  # the gateway's own record, line by line
        f.write(json.dumps({"at": sent.at.isoformat(), "provider": dialect, "biz_id": message_id,
                            "phone": phone, "out_id": out_id, "template": template_id,
                            "text": text, "segments": segments(text)}, ensure_ascii=False) + "\n")
    _schedule_receipts(state, sent)
    return sent


async def api(request: Request) -> JSONResponse:
    state: State = request.app.state.gw
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    tencent = "x-tc-action" in headers
    cfg = state.config
    if tencent:
        why = verify_tc3(request.method, request.url.path, request.url.query, headers, body,
                         cfg.tencent_secret_id, cfg.tencent_secret_key, time.time())
    else:
        why = verify_acs3(request.method, request.url.path, list(request.query_params.multi_items()),
                          headers, body, cfg.access_key_id, cfg.access_key_secret)
    if why is not None:
        return (_tc_error("AuthFailure.SignatureFailure", why) if tencent
                else _answer("SignatureDoesNotMatch", why, 400))
    action = (headers["x-tc-action"] if tencent
              else headers.get("x-acs-action") or request.query_params.get("Action"))
    # The account's rate is checked as a call arrives, before it is worked on, as the
    # providers' API gateways do: beyond it, their throttling error.
    if action == "SendSms" and state.rate is not None and not state.rate.allow(time.monotonic()):
        state.throttled += 1
        return (_tc_error("RequestLimitExceeded", "请求的次数超过了频率限制") if tencent
                else _answer("Throttling.User", "Request was denied due to user flow control.",
                             400))
    lo, hi = cfg.latency
    if hi > 0:
        await asyncio.sleep(state.rng.uniform(lo, hi))
    if tencent:
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return _tc_error("InvalidParameter", "the body is not JSON")
        if not isinstance(payload, dict):
            return _tc_error("InvalidParameter", "the body is not a JSON object")
        if headers["x-tc-action"] == "SendSms":
            return _tc_send(state, payload)
        if headers["x-tc-action"] == "PullSmsSendStatusByPhoneNumber":
            return _tc_pull(state, payload)
        return _tc_error("InvalidAction", f"unknown action {headers['x-tc-action']!r}")
    params = dict(request.query_params.multi_items())
    action = headers.get("x-acs-action") or params.get("Action")
    if action == "SendSms":
        return _aliyun_send(state, params)
    if action == "QuerySendDetails":
        return _aliyun_query(state, params)
    return _answer("InvalidAction.NotFound", f"unknown action {action!r}", 404)


# Aliyun's dialect.


def _answer(code: str, message: str, status: int = 200, **extra: Any) -> JSONResponse:
    return JSONResponse({"Code": code, "Message": message,
                         "RequestId": f"{random.getrandbits(64):016X}", **extra}, status)


def _aliyun_send(state: State, p: dict[str, str]) -> JSONResponse:
    try:
        params = json.loads(p.get("TemplateParam", "{}"))
    except ValueError:
        return _answer("isv.INVALID_JSON_PARAM", "JSON参数不合法")
    if not isinstance(params, dict):
        return _answer("isv.INVALID_JSON_PARAM", "JSON参数不合法")
    try:
        sent = _accept(state, ALIYUN, p.get("PhoneNumbers", ""), p.get("SignName"),
                       p.get("TemplateCode", ""), {k: str(v) for k, v in params.items()},
                       p.get("OutId", ""))
    except Refused as r:
        return _answer(r.codes[ALIYUN], str(r))
    return _answer("OK", "OK", BizId=sent.message_id)


def _aliyun_query(state: State, p: dict[str, str]) -> JSONResponse:
    phone, day = p.get("PhoneNumber", ""), p.get("SendDate", "")
    try:
        size = max(1, min(50, int(p.get("PageSize") or 10)))
        page = max(1, int(p.get("CurrentPage") or 1))
    except ValueError:
        return _answer("isv.INVALID_PARAMETERS", "参数异常")
    matches = [s for s in state.sent if s.dialect == ALIYUN and s.phone == phone
               and s.at.astimezone(BEIJING).strftime("%Y%m%d") == day
               and (not p.get("BizId") or s.message_id == p["BizId"])]
    chunk = matches[(page - 1) * size: page * size]
    return _answer("OK", "OK", TotalCount=str(len(matches)), SmsSendDetailDTOs={"SmsSendDetailDTO": [{
        "PhoneNum": s.phone, "SendStatus": 3, "ErrCode": "DELIVERED", "TemplateCode": s.template,
        "Content": s.text, "SendDate": s.at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
        "ReceiveDate": "", "OutId": s.out_id} for s in chunk]})


# Tencent's dialect: errors of a whole request in Response.Error, of a number in SendStatusSet.


def _tc(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"Response": {**body, "RequestId": str(random.getrandbits(64))}})


def _tc_error(code: str, message: str) -> JSONResponse:
    return _tc({"Error": {"Code": code, "Message": message}})


def _tc_send(state: State, p: dict[str, Any]) -> JSONResponse:
    numbers = p.get("PhoneNumberSet")
    if not isinstance(numbers, list) or len(numbers) != 1 or not isinstance(numbers[0], str):
        return _tc_error("InvalidParameterValue.IncorrectPhoneNumber", "one number per request here")
    if p.get("SmsSdkAppId") != state.config.tencent_app_id:
        return _tc_error("FailedOperation.InvalidSmsSdkAppId", "unknown SmsSdkAppId")
    template = state.template(TENCENT, str(p.get("TemplateId", "")))
    values = p.get("TemplateParamSet") or []
    keys = template_keys(template) if template else []
    if not isinstance(values, list) or len(values) != len(keys):
        return _tc_error("InvalidParameterValue.TemplateParameterFormatError",
                         "TemplateParamSet does not match the template")
    phone = numbers[0].removeprefix("+86")
    try:
        sent = _accept(state, TENCENT, phone, p.get("SignName"), str(p.get("TemplateId", "")),
                       dict(zip(keys, map(str, values))), str(p.get("SessionContext", "")))
        status = {"SerialNo": sent.message_id, "Code": "Ok", "Message": "send success",
                  "Fee": segments(sent.text)}
    except Refused as r:
        status = {"SerialNo": "", "Code": r.codes[TENCENT], "Message": str(r), "Fee": 0}
    return _tc({"SendStatusSet": [{**status, "PhoneNumber": numbers[0], "IsoCode": "CN",
                                   "SessionContext": str(p.get("SessionContext", ""))}]})


def _tc_pull(state: State, p: dict[str, Any]) -> JSONResponse:
    try:
        begin, end = int(p["BeginTime"]), int(p.get("EndTime") or time.time())
        offset, limit = int(p.get("Offset", 0)), max(1, min(100, int(p.get("Limit", 100))))
    except (KeyError, TypeError, ValueError):
        return _tc_error("InvalidParameter", "BeginTime, Offset and Limit are integers")
    phone = str(p.get("PhoneNumber", "")).removeprefix("+86")
    matches = [s for s in state.sent if s.dialect == TENCENT and s.phone == phone
               and begin <= s.at.timestamp() <= end]
    return _tc({"PullSmsSendStatusSet": [{
        "UserReceiveTime": s.at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
        "CountryCode": "86", "SubscriberNumber": s.phone, "PhoneNumber": f"+86{s.phone}",
        "SerialNo": s.message_id, "ReportStatus": "SUCCESS", "Description": "用户短信送达成功",
        "SessionContext": s.out_id} for s in matches[offset: offset + limit]]})


# ------------------------------------------------------------------------------------ receipts


def _schedule_receipts(state: State, sent: Sent) -> None:
    cfg = state.config
    if (cfg.callback_url if sent.dialect == ALIYUN else cfg.tencent_callback_url) is None:
        return
    ok = not sent.phone.endswith(cfg.failed_receipt_suffix)
    if sent.dialect == ALIYUN:
        report: dict[str, Any] = {
            "phone_number": sent.phone, "report_time": None, "success": ok,
            "send_time": sent.at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
            "err_code": "DELIVERED" if ok else "MK:0001", "err_msg": "用户接收成功" if ok else "空号",
            "sms_size": str(segments(sent.text)), "biz_id": sent.message_id, "out_id": sent.out_id}
    else:
        report = {"user_receive_time": None, "nationcode": "86", "mobile": sent.phone,
                  "report_status": "SUCCESS" if ok else "FAIL",
                  "errmsg": "DELIVRD" if ok else "MK:0001",
                  "description": "用户短信送达成功" if ok else "空号", "sid": sent.message_id}
    due = time.monotonic() + state.rng.uniform(*cfg.receipt_delay)
    state.receipts.append((due, sent.dialect, report))
    if state.rng.random() < cfg.repeat_rate:
        state.receipts.append((due + state.rng.uniform(*cfg.receipt_delay), sent.dialect, report))


async def _push_receipts(state: State) -> None:
    """Deliver due reports in batches of up to 100 per dialect, as the providers' HTTP pushes
    do; a batch that is not acknowledged is pushed again later."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            await asyncio.sleep(0.3)
            now = time.monotonic()
            for dialect, url in ((ALIYUN, state.config.callback_url),
                                 (TENCENT, state.config.tencent_callback_url)):
                due = [r for r in state.receipts if r[0] <= now and r[1] == dialect][:100]
                if not due or url is None:
                    continue
                stamp = datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
                key = "report_time" if dialect == ALIYUN else "user_receive_time"
                try:
                    resp = await client.post(url, json=[dict(r[2], **{key: stamp}) for r in due])
                    answer = resp.json() if resp.status_code == 200 else {}
                    accepted = (answer.get("code") == 0 if dialect == ALIYUN
                                else answer.get("result") == 0)
                except (httpx.HTTPError, ValueError, AttributeError):
                    accepted = False
                if accepted:
                    for r in due:
                        state.receipts.remove(r)
                    state.pushed += len(due)


async def sent_log(request: Request) -> JSONResponse:
    """What the gateway accepted (for tests and the demo), phones masked."""
    state: State = request.app.state.gw
    return JSONResponse({"sent": [{"provider": s.dialect, "message_id": s.message_id,
                                   "phone": mask_phone(s.phone), "out_id": s.out_id,
                                   "text": s.text} for s in state.sent],
                         "receipts_pending": len(state.receipts), "receipts_pushed": state.pushed,
                         "throttled": state.throttled})


def _reload(log_path: Path) -> list[Sent]:
    """What an earlier run of this gateway accepted: a provider does not forget its messages
    when it restarts, so a query still finds them."""
    if not log_path.exists():
        return []
    out = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
            out.append(Sent(d["biz_id"], d["phone"], d["out_id"], d["template"], d["text"],
                            datetime.fromisoformat(d["at"]), d.get("provider", ALIYUN)))
        except (ValueError, KeyError):
            log.warning("skipping an unreadable line of %s", log_path.name)  # a torn last line
    return out


def create_gateway(config: GatewayConfig, policy: SmsPolicy) -> Starlette:
    state = State(config, policy, random.Random(config.seed), sent=_reload(config.log_path))

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


def _latency(text: str) -> tuple[float, float]:
    """"min,max" seconds, or one figure for both ("0": none)."""
    parts = [float(x) for x in text.split(",")]
    if len(parts) not in (1, 2) or min(parts) < 0:
        raise argparse.ArgumentTypeError(f"--latency: {text!r} is not min,max seconds")
    return parts[0], parts[-1]


def main(argv: list[str] | None = None) -> None:
    import os

    import uvicorn

    parser = argparse.ArgumentParser(
        description="A local SMS gateway speaking Aliyun's and Tencent Cloud's SMS APIs")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--county", required=True, help="the county file whose [sms] templates it knows")
    parser.add_argument("--log", required=True, help="where to append accepted SMS (JSON lines)")
    parser.add_argument("--callback", help="URL Aliyun-style delivery reports are pushed to")
    parser.add_argument("--callback-tencent", help="URL Tencent-style delivery reports are pushed to")
    parser.add_argument("--tencent-app-id", default="1400000001")
    parser.add_argument("--fail-prefix", default="",
                        help="numbers starting so always get a system error (failover drills)")
    parser.add_argument("--transient-rate", type=float, default=0.0)
    parser.add_argument("--per-number-per-minute", type=int, default=5)
    parser.add_argument("--blacklist", default="")
    parser.add_argument("--receipt-delay", default="0.2,2.0", help="min,max seconds")
    parser.add_argument("--repeat-rate", type=float, default=0.2)
    parser.add_argument("--latency", default="0,0", help="min,max seconds added to each call")
    parser.add_argument("--qps", type=float, default=0.0,
                        help="SendSms calls a second the account may make (0: no limit)")
    parser.add_argument("--seed", type=int)
    a = parser.parse_args(argv)
    county = load_county(a.county)
    config = GatewayConfig(
        access_key_id=os.environ["GONGPEI_SMS_ACCESS_KEY_ID"],
        access_key_secret=os.environ["GONGPEI_SMS_ACCESS_KEY_SECRET"],
        tencent_secret_id=os.environ.get("GONGPEI_SMS_TENCENT_SECRET_ID", ""),
        tencent_secret_key=os.environ.get("GONGPEI_SMS_TENCENT_SECRET_KEY", ""),
        log_path=Path(a.log), callback_url=a.callback, tencent_callback_url=a.callback_tencent,
        tencent_app_id=a.tencent_app_id, fail_prefix=a.fail_prefix, transient_rate=a.transient_rate,
        per_number_per_minute=a.per_number_per_minute,
        blacklist=frozenset(x for x in a.blacklist.split(",") if x),
        receipt_delay=tuple(map(float, a.receipt_delay.split(","))),  # type: ignore[arg-type]
        repeat_rate=a.repeat_rate,
        latency=_latency(a.latency), qps=a.qps, seed=a.seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_gateway(config, county.sms or SmsPolicy()), host="127.0.0.1", port=a.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
