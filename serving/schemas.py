"""Request and response bodies of the scoring API, built on the shared vocabulary so an
invalid enum, amount or time gets a 422 that names the field."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reclaim import timeutil, vocab
from reclaim.fields import Currency, Identifier, PastTime, Text, max_amount


class PaymentIn(BaseModel):
    """A failed payment, in the data contract's shape (docs/data-contract.md)."""

    model_config = ConfigDict(extra="forbid")

    payment_id: Identifier
    object: vocab.PaymentObject
    account_id: Identifier
    charge_model: vocab.ChargeModel
    on_behalf_of: bool = False
    amount: int = Field(
        gt=0,
        description="Minor units of the currency; at most Stripe's maximum charge for it "
        "(99,999,999 in most currencies).",
    )
    currency: Currency
    application_fee_amount: int | None = Field(default=None, ge=0)
    customer_id: Identifier
    customer_country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    customer_timezone: Text | None = Field(default=None, max_length=64)
    card_brand: vocab.CardBrand = vocab.CardBrand.OTHER
    card_funding: vocab.Funding = vocab.Funding.UNKNOWN
    card_country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    billing_reason: vocab.BillingReason = vocab.BillingReason.MANUAL
    failed_at: PastTime
    decline_code: Text = Field(min_length=1, max_length=100)
    advice_code: vocab.AdviceCode | None = None
    network_decline_code: Text | None = Field(default=None, max_length=40)
    network_advice_code: Text | None = Field(default=None, max_length=40)
    reachable_email: bool = Field(
        default=True,
        description="The customer can be emailed. Reclaim never messages a "
        "customer through a channel marked unreachable.",
    )
    reachable_sms: bool = Field(default=True, description="The customer can get SMS.")
    reachable_in_app: bool = Field(
        default=True, description="The customer has the app with notifications on."
    )

    @field_validator("customer_timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None and not timeutil.is_timezone(value):
            raise ValueError(f"unknown IANA timezone {value!r}")
        return value

    @model_validator(mode="after")
    def _fee_within_amount(self) -> PaymentIn:
        if self.amount > max_amount(self.currency):
            raise ValueError(
                f"amount is above the largest charge Stripe takes in {self.currency} "
                f"({max_amount(self.currency):,} minor units)"
            )
        if self.application_fee_amount is not None and self.application_fee_amount > self.amount:
            raise ValueError("application_fee_amount cannot exceed amount")
        return self


class AttemptIn(BaseModel):
    """A charge attempt after the first failure (attempt 0 is implied by the payment)."""

    model_config = ConfigDict(extra="forbid")

    attempt_number: int = Field(ge=1, le=1000)
    attempted_at: PastTime
    initiator: vocab.Initiator = vocab.Initiator.MERCHANT
    outcome: vocab.Outcome
    decline_code: Text | None = Field(default=None, max_length=100)
    advice_code: vocab.AdviceCode | None = None
    network_decline_code: Text | None = Field(default=None, max_length=40)
    network_advice_code: Text | None = Field(default=None, max_length=40)

    @model_validator(mode="after")
    def _failed_needs_code(self) -> AttemptIn:
        if self.outcome is vocab.Outcome.FAILED and not self.decline_code:
            raise ValueError("a failed attempt needs a decline_code")
        return self


class MessageIn(BaseModel):
    """A message already sent about the payment."""

    model_config = ConfigDict(extra="forbid")

    message_id: Identifier
    sent_at: PastTime
    channel: vocab.Channel
    sender: vocab.Sender


class DecisionRequest(BaseModel):
    """One failed payment's context: inline, or just its id when the service holds it."""

    model_config = ConfigDict(extra="forbid")

    payment: PaymentIn | None = None
    payment_id: Identifier | None = None
    account_id: Identifier | None = Field(
        default=None,
        description="With `payment_id`: the connected account holding it (Stripe ids are "
        "unique within an account). Needed only when the id is held by more than one of the "
        "key's accounts.",
    )
    attempts: list[AttemptIn] = Field(default_factory=list, max_length=100)
    messages: list[MessageIn] = Field(default_factory=list, max_length=100)
    now: PastTime | None = Field(
        default=None, description="Decision time (not before the failure); default now."
    )

    @property
    def id(self) -> str:
        """The payment's id, however it was given."""
        return self.payment.payment_id if self.payment is not None else str(self.payment_id)

    @property
    def account(self) -> str | None:
        """The payment's connected account, when the request names it."""
        return self.payment.account_id if self.payment is not None else self.account_id

    @property
    def ref(self) -> tuple[str, str]:
        """The payment's key in the store, (account, id): for a request whose account is
        named (:func:`reclaim.serving.decide.resolve` names it for every admitted one)."""
        if self.account is None:
            raise ValueError(f"payment {self.id!r}: its account is not resolved")
        return (self.account, self.id)

    @model_validator(mode="after")
    def _one_way_to_name_the_payment(self) -> DecisionRequest:
        if (self.payment is None) == (self.payment_id is None):
            raise ValueError("give exactly one of payment (the context) or payment_id")
        if self.payment is not None and self.account_id is not None:
            raise ValueError("account_id comes with payment_id; an inline payment names it")
        if self.payment is None and (self.attempts or self.messages):
            raise ValueError("attempts and messages come with an inline payment, not a payment_id")
        if self.payment is None:
            return self
        failed = self.payment.failed_at
        for a in self.attempts:
            if a.attempted_at < failed:
                raise ValueError(
                    f"attempts: attempt {a.attempt_number} is before the payment failed"
                )
        for m in self.messages:
            if m.sent_at < failed:
                raise ValueError(f"messages: message {m.message_id!r} is before the payment failed")
        if self.now is not None and self.now < failed:
            raise ValueError("now is before the payment failed (failed_at)")
        _no_repeats("attempts", "attempt_number", [a.attempt_number for a in self.attempts])
        _no_repeats("messages", "message_id", [m.message_id for m in self.messages])
        return self


def _no_repeats(where: str, field: str, values: list) -> None:
    repeated = [v for v, n in Counter(values).items() if n > 1]
    if repeated:
        raise ValueError(f"{where}: {field} {repeated[0]!r} appears more than once")


class BatchDecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[DecisionRequest] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _each_payment_once(self) -> BatchDecisionRequest:
        # a payment once; the same id may come for two named accounts (Stripe ids are
        # unique within an account), never twice where an account is left to be found
        accounts: dict[str, list[str | None]] = {}
        for d in self.decisions:
            accounts.setdefault(d.id, []).append(d.account)
        for pid, named in accounts.items():
            if len(named) > 1 and (None in named or len(set(named)) < len(named)):
                raise ValueError(f"decisions: payment {pid!r} appears more than once")
        return self


class RetryOut(BaseModel):
    at_utc: datetime
    at_local: datetime = Field(description="The same moment in the customer's timezone.")
    local_timezone: str
    other_processor_allowed: bool = Field(
        default=False,
        description="Stripe Orchestration may send this retry to the platform's retry "
        "processor: the account has `orchestration` on, the payment is not `on_behalf_of`, "
        "and its 3D Secure never failed.",
    )


class DecisionOut(BaseModel):
    """The next action for one payment."""

    payment_id: str
    account_id: str = Field(description="The connected account holding the payment.")
    decided_at: datetime
    retry: RetryOut | None
    no_retry_reason: str | None = Field(description="Why there is no retry, when there is none.")
    channel: vocab.Channel | None
    sender: vocab.Sender | None
    expected_recovery_probability: float = Field(
        description="The retry-time model's calibrated chance that the chosen retry succeeds."
    )
    propensity: float = Field(description="Probability of this action under the policy.")
    model_version: str
    policy: str = Field(
        description="Which policy decided: the served model, or the control arm's reference "
        "policy when an A/B test runs (RECLAIM_EXPERIMENT_CONTROL)."
    )
    reasons: list[str] = Field(description="Features that moved the chosen retry the most.")


class BatchDecisionOut(BaseModel):
    decisions: list[DecisionOut]
