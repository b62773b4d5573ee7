"""Standard Webhooks signatures (https://www.standardwebhooks.com): the signed content is
`{webhook-id}.{webhook-timestamp}.{body}` and the signature header is `v1,<base64 HMAC-SHA256>` keyed with the
base64-decoded part of the `whsec_` secret."""

from __future__ import annotations

import base64
import hashlib
import hmac


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, webhook_id, timestamp, body),
        "content-type": "application/json",
    }
