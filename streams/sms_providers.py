"""SMS providers behind one interface: send a templated SMS with our out-id, and find out whether
a given out-id was already accepted (asked before any resend, since no provider dedupes).

Aliyun (dysmsapi 2017-05-25) and Tencent Cloud (sms 2021-01-11) go through their official SDKs,
which take an endpoint and protocol, so the same clients talk to the providers or to the local
gateway (entrypoints/sms_gateway.py). The SDKs' own retries are off: a retried SendSms is a second SMS,
and retrying is the sender's decision."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal, Protocol

import orjson

from domain.sms import SmsPolicy, template_keys

log = logging.getLogger("gongpei.sms")
BEIJING = timezone(timedelta(hours=8))  # both providers keep China Standard Time dates

Outcome = Literal["ok", "transient", "permanent", "unknown"]

# Aliyun's business codes. Permanent: retrying the same SMS cannot succeed today. Everything not
# listed (isp.SYSTEM_ERROR, isv.BUSINESS_LIMIT_CONTROL, throttling, 5xx) is worth a later retry.
ALIYUN_PERMANENT = frozenset({
    "isv.MOBILE_NUMBER_ILLEGAL", "isv.BLACK_KEY_CONTROL_LIMIT", "isv.AMOUNT_NOT_ENOUGH",
    "isv.DAY_LIMIT_CONTROL", "isv.MOBILE_COUNT_OVER_LIMIT", "isv.OUT_OF_SERVICE",
    "isv.ACCOUNT_NOT_EXISTS", "isv.ACCOUNT_ABNORMAL", "isv.SMS_TEMPLATE_ILLEGAL",
    "isv.SMS_SIGNATURE_ILLEGAL", "isv.TEMPLATE_MISSING_PARAMETERS", "isv.INVALID_PARAMETERS",
    "isv.PARAM_LENGTH_LIMIT", "isv.INVALID_JSON_PARAM", "isv.DENY_IP_RANGE",
    "InvalidAccessKeyId.NotFound", "SignatureDoesNotMatch", "isv.EXTEND_CODE_ERROR",
})


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    code: str                     # the provider's code ("OK" on success)
    message_id: str | None = None  # the provider's id for the message (Aliyun BizId)


class Provider(Protocol):
    name: str
    # Whether `find` sees every SMS the provider accepted (Aliyun's QuerySendDetails), or only
    # those a carrier has reported on (Tencent's status pull): then "not found" proves nothing.
    lists_every_send: bool

    async def send(self, *, phone: str, sign_name: str, template_code: str,
                   params: dict[str, str], out_id: str) -> SendResult: ...

    async def find(self, *, phone: str, out_id: str, sent_on: date) -> str | None:
        """The provider's message id if it accepted an SMS with this out-id; None if not.
        Raises when it cannot tell (then nothing may be sent)."""
        ...


class ProviderUnavailable(Exception):
    """The provider could not be asked (network, 5xx): nothing is known."""


class AliyunSms:
    """Aliyun SMS through the official SDK (alibabacloud-dysmsapi20170525)."""

    def __init__(self, name: str, endpoint: str, access_key_id: str, access_key_secret: str,
                 protocol: str = "https", timeout_ms: int = 5000) -> None:
        from alibabacloud_dysmsapi20170525.client import Client
        from alibabacloud_tea_openapi.models import Config

        self.name = name
        self.lists_every_send = True
        self._client = Client(Config(
            access_key_id=access_key_id, access_key_secret=access_key_secret, endpoint=endpoint,
            protocol=protocol, read_timeout=timeout_ms, connect_timeout=timeout_ms))
        self._timeout_ms = timeout_ms

    def _runtime(self) -> object:
        from darabonba.runtime import RuntimeOptions

        return RuntimeOptions(autoretry=False, max_attempts=1, read_timeout=self._timeout_ms,
                              connect_timeout=self._timeout_ms)

    async def send(self, *, phone: str, sign_name: str, template_code: str,
                   params: dict[str, str], out_id: str) -> SendResult:
        from alibabacloud_dysmsapi20170525 import models

        request = models.SendSmsRequest(
            phone_numbers=phone, sign_name=sign_name, template_code=template_code,
            template_param=orjson.dumps(params).decode(), out_id=out_id)
        try:
            response = await self._client.send_sms_with_options_async(request, self._runtime())
        except Exception as exc:  # noqa: BLE001 - the SDK raises its own and aiohttp's errors
            return _aliyun_error(exc)
        body = response.body
        if body.code == "OK" and body.biz_id:
            return SendResult("ok", "OK", body.biz_id)
        code = body.code or "UNKNOWN"
        return SendResult("permanent" if code in ALIYUN_PERMANENT else "transient", code)

    async def find(self, *, phone: str, out_id: str, sent_on: date) -> str | None:
        from alibabacloud_dysmsapi20170525 import models

        page = 1
        while True:
            request = models.QuerySendDetailsRequest(
                phone_number=phone, send_date=sent_on.strftime("%Y%m%d"), page_size=50,
                current_page=page)
            try:
                response = await self._client.query_send_details_with_options_async(
                    request, self._runtime())
            except Exception as exc:  # noqa: BLE001
                raise ProviderUnavailable(type(exc).__name__) from None
            body = response.body
            if body.code != "OK":
                raise ProviderUnavailable(body.code or "UNKNOWN")
            details = (body.sms_send_detail_dtos.sms_send_detail_dto
                       if body.sms_send_detail_dtos else None) or []
            for d in details:
                if d.out_id == out_id:
                    return str(getattr(d, "biz_id", None) or f"{out_id}@{self.name}")
            if len(details) < 50:
                return None
            page += 1


def _never_connected(message: str) -> bool:
    """The error says the connection was never made, so no request reached the provider."""
    return any(s in message for s in ("Cannot connect to host", "NewConnectionError",
                                      "Connection refused", "Name or service not known"))


def _aliyun_error(exc: Exception) -> SendResult:
    code = str(getattr(exc, "code", "") or type(exc).__name__)
    status = getattr(exc, "status_code", None)
    if status is None:
        # No HTTP answer: unless the connection was never made, the request may or may not
        # have reached the provider.
        if _never_connected(str(getattr(exc, "inner_exception", "")) + str(exc)):
            return SendResult("transient", "ConnectFailed")
        return SendResult("unknown", code)
    if code in ALIYUN_PERMANENT:
        return SendResult("permanent", code)
    return SendResult("transient", code)


# Tencent's codes. Permanent as for Aliyun; the per-number 30-second and one-hour limits, request
# throttling and internal errors pass.
TENCENT_TRANSIENT_PREFIXES = ("InternalError", "RequestLimitExceeded",
                              "LimitExceeded.PhoneNumberThirtySecondLimit",
                              "LimitExceeded.PhoneNumberOneHourLimit", "LimitExceeded.AppGlobalDailyLimit",
                              "ServerNetworkError")


class TencentSms:
    """Tencent Cloud SMS (API 2021-01-11) through its official SDK (tencentcloud-sdk-python-sms).
    Our message id goes in `SessionContext`, which `PullSmsSendStatusByPhoneNumber` returns.
    The SDK is synchronous; calls run in threads of its own, as many as the sender has calls in
    progress (asyncio's default pool has five or six on a small server: it would cap the rate)."""

    def __init__(self, name: str, endpoint: str, secret_id: str, secret_key: str,
                 sdk_app_id: str, policy: SmsPolicy, protocol: str = "https",
                 timeout_s: int = 5, region: str = "ap-guangzhou", threads: int = 32) -> None:
        from tencentcloud.common.credential import Credential
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile
        from tencentcloud.sms.v20210111.sms_client import SmsClient

        self.name = name
        self.lists_every_send = False
        self._app_id = sdk_app_id
        self._policy = policy
        self._client = SmsClient(Credential(secret_id, secret_key), region, ClientProfile(
            httpProfile=HttpProfile(protocol=protocol, endpoint=endpoint, reqTimeout=timeout_s)))
        self._threads = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=name)

    async def _call(self, method: Callable[[Any], Any], request: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads, method, request)

    def _template(self, template_code: str) -> tuple[str, list[str]] | None:
        """Tencent's template id for our template code, and its parameter order."""
        for key, code in self._policy.template_codes.items():
            if code == template_code:
                text = getattr(self._policy.templates, key)
                return self._policy.tencent_template_ids[key], template_keys(text)
        return None

    async def send(self, *, phone: str, sign_name: str, template_code: str,
                   params: dict[str, str], out_id: str) -> SendResult:
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import (
            TencentCloudSDKException,
        )
        from tencentcloud.sms.v20210111 import models

        template = self._template(template_code)
        if template is None:
            return SendResult("permanent", "FailedOperation.TemplateNotFound")
        template_id, keys = template
        request = models.SendSmsRequest()
        request.PhoneNumberSet = [f"+86{phone}"]
        request.SmsSdkAppId = self._app_id
        request.SignName = sign_name
        request.TemplateId = template_id
        request.TemplateParamSet = [params.get(k, "") for k in keys]
        request.SessionContext = out_id
        try:
            response = await self._call(self._client.SendSms, request)
        except TencentCloudSDKException as exc:
            code = exc.get_code() or "UNKNOWN"
            if code == "ClientNetworkError":
                if _never_connected(exc.get_message() or ""):
                    return SendResult("transient", "ConnectFailed")
                return SendResult("unknown", code)  # it may or may not have arrived
            return SendResult("transient" if code.startswith(TENCENT_TRANSIENT_PREFIXES)
                              else "permanent", code)
        status = (response.SendStatusSet or [None])[0]
        if status is None:
            return SendResult("transient", "EmptySendStatusSet")
        if status.Code == "Ok" and status.SerialNo:
            return SendResult("ok", "Ok", status.SerialNo)
        code = status.Code or "UNKNOWN"
        return SendResult("transient" if code.startswith(TENCENT_TRANSIENT_PREFIXES)
                          else "permanent", code)

    async def find(self, *, phone: str, out_id: str, sent_on: date) -> str | None:
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import (
            TencentCloudSDKException,
        )
        from tencentcloud.sms.v20210111 import models

        begin = datetime.combine(sent_on, datetime.min.time(), BEIJING)
        offset = 0
        while True:
            request = models.PullSmsSendStatusByPhoneNumberRequest()
            request.BeginTime = int(begin.timestamp())
            request.EndTime = int((begin + timedelta(days=1)).timestamp())
            request.Offset, request.Limit = offset, 100
            request.PhoneNumber = f"+86{phone}"
            request.SmsSdkAppId = self._app_id
            try:
                response = await self._call(self._client.PullSmsSendStatusByPhoneNumber, request)
            except TencentCloudSDKException as exc:
                raise ProviderUnavailable(exc.get_code() or "UNKNOWN") from None
            statuses = response.PullSmsSendStatusSet or []
            for s in statuses:
                if s.SessionContext == out_id:
                    return str(s.SerialNo)
            if len(statuses) < 100:
                return None
            offset += 100
