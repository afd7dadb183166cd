"""How messages reach customers: a channel interface and its working implementations.

- :class:`SmtpEmail` sends email over SMTP, from the sender's branding (the connected account's
  or the platform's display name and address).
- :class:`SignedWebhook` posts SMS and in-app messages as JSON to a URL the platform
  configures, signed like Stripe's webhooks (``Reclaim-Signature: t=<unix>,v1=<hex HMAC-SHA256
  of "t.body">``), for the platform's own SMS provider or app to deliver.

A message carries a stable ``key`` (one per decision point): the email's ``Message-ID`` and the
webhook's ``Idempotency-Key`` header, so a message resent after a crash is recognisably the
same message to whoever receives it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import time
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formataddr
from typing import Any, Protocol

import httpx

from reclaim.contract import decimals, major

#: Why a message is sent: a declined payment to fix, or a 3D Secure confirmation only the
#: customer can give (``reclaim.rules``: the ``customer_action`` rule's reminder).
PURPOSES = ("payment_failed", "authenticate")


@dataclass(frozen=True)
class OutgoingMessage:
    """One recovery message: who it is for, from whom, about what."""

    key: str
    payment_id: str
    account_id: str
    customer_id: str
    channel: str
    sender: str  # platform | account
    amount: int
    currency: str
    branding: dict[str, Any] = field(default_factory=dict)
    recipient: str | None = None  # the customer's email address, for email
    purpose: str = "payment_failed"  # one of PURPOSES


class ChannelError(RuntimeError):
    """The channel did not take the message; the outbox tries again later."""


class Channel(Protocol):
    def send(self, message: OutgoingMessage) -> None:
        """Hand the message over, or raise :class:`ChannelError`."""


def _amount(message: OutgoingMessage) -> str:
    """The amount in major units with its currency: ``49.00 USD``, ``4900 JPY``."""
    digits = decimals(message.currency)
    return f"{major(message.amount, message.currency):,.{digits}f} {message.currency.upper()}"


def link(template: str | None, message: OutgoingMessage) -> str | None:
    """A branding URL with ``{payment_id}`` filled in (a platform's hosted page per payment);
    stored URLs hold the placeholder percent-encoded."""
    if not template:
        return None
    for placeholder in ("{payment_id}", "%7Bpayment_id%7D"):
        template = template.replace(placeholder, message.payment_id)
    return template


class SmtpEmail:
    """Email over SMTP. ``default_from`` is used where the branding names no address."""

    def __init__(self, host: str, port: int, default_from: str, timeout: float = 10.0):
        self.host, self.port, self.default_from, self.timeout = host, port, default_from, timeout

    def compose(self, message: OutgoingMessage) -> EmailMessage:
        if not message.recipient:
            raise ChannelError(f"customer {message.customer_id} has no email address")
        brand = message.branding
        name = brand.get("display_name") or ""
        email = EmailMessage()
        email["From"] = formataddr((name, brand.get("email_from") or self.default_from))
        email["To"] = message.recipient
        if brand.get("reply_to"):
            email["Reply-To"] = brand["reply_to"]
        digest = hashlib.sha256(message.key.encode()).hexdigest()[:32]
        email["Message-ID"] = f"<{digest}@reclaim>"
        if message.purpose == "authenticate":
            # Stripe's automatic collection sends this for 3D Secure: only the customer can
            # confirm, so the message asks for that and no retry is promised.
            url = link(brand.get("authenticate_url") or brand.get("update_payment_url"), message)
            email["Subject"] = f"Confirm your payment of {_amount(message)} to {name or 'us'}"
            email.set_content(
                f"Your bank asks you to confirm your payment of {_amount(message)} to "
                f"{name or 'us'} (3D Secure).\n"
                + (f"Confirm it here: {url}\n" if url else "")
                + "We cannot complete it without you.\n"
            )
            return email
        email["Subject"] = f"{name or 'Your'} payment of {_amount(message)} did not go through"
        url = link(brand.get("update_payment_url"), message)
        email.set_content(
            f"Your payment of {_amount(message)} to {name or 'us'} was declined.\n"
            + (f"Update your card here: {url}\n" if url else "")
            + "We will try again soon; nothing is needed if your card is already up to date.\n"
        )
        return email

    def send(self, message: OutgoingMessage) -> None:
        email = self.compose(message)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.send_message(email)
        except (OSError, smtplib.SMTPException) as exc:
            raise ChannelError(f"SMTP {self.host}:{self.port}: {exc}") from exc


def signature(body: bytes, secret: str, timestamp: int) -> str:
    """The ``Reclaim-Signature`` header value for ``body``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class SignedWebhook:
    """SMS and in-app messages as signed JSON posts to the platform's URL."""

    def __init__(self, url: str, secret: str, timeout: float = 10.0):
        self.url, self.secret, self.timeout = url, secret, timeout

    def send(self, message: OutgoingMessage) -> None:
        body = json.dumps({"type": f"reclaim.message.{message.channel}", **asdict(message)})
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message.key,
            "Reclaim-Signature": signature(body.encode(), self.secret, int(time.time())),
        }
        try:
            response = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise ChannelError(f"{self.url}: {exc}") from exc
        if not response.is_success:
            raise ChannelError(f"{self.url} answered {response.status_code}")
