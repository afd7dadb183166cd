"""Request and response bodies of the scoring API, built on the shared vocabulary so an
invalid enum, amount or time gets a 422 that names the field."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from reclaim import timeutil, vocab


class PaymentIn(BaseModel):
    """A failed payment, in the data contract's shape (docs/data-contract.md)."""

    model_config = ConfigDict(extra="forbid")

    payment_id: str = Field(min_length=1, max_length=255)
    object: vocab.PaymentObject
    account_id: str = Field(min_length=1, max_length=255)
    charge_model: vocab.ChargeModel
    on_behalf_of: bool = False
    amount: int = Field(gt=0, description="Minor units of the currency.")
    currency: str = Field(pattern=r"^[a-z]{3}$")
    application_fee_amount: int | None = Field(default=None, ge=0)
    customer_id: str = Field(min_length=1, max_length=255)
    customer_country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    customer_timezone: str | None = None
    card_brand: vocab.CardBrand = vocab.CardBrand.OTHER
    card_funding: vocab.Funding = vocab.Funding.UNKNOWN
    card_country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    billing_reason: vocab.BillingReason = vocab.BillingReason.MANUAL
    failed_at: AwareDatetime
    decline_code: str = Field(min_length=1, max_length=100)
    advice_code: vocab.AdviceCode | None = None
    network_decline_code: str | None = None
    network_advice_code: str | None = None

    @field_validator("customer_timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None and not timeutil.is_timezone(value):
            raise ValueError(f"unknown IANA timezone {value!r}")
        return value

    @model_validator(mode="after")
    def _fee_within_amount(self) -> PaymentIn:
        if self.application_fee_amount is not None and self.application_fee_amount > self.amount:
            raise ValueError("application_fee_amount cannot exceed amount")
        return self


class AttemptIn(BaseModel):
    """A charge attempt after the first failure (attempt 0 is implied by the payment)."""

    model_config = ConfigDict(extra="forbid")

    attempt_number: int = Field(ge=1)
    attempted_at: AwareDatetime
    initiator: vocab.Initiator = vocab.Initiator.MERCHANT
    outcome: vocab.Outcome
    decline_code: str | None = None
    advice_code: vocab.AdviceCode | None = None
    network_decline_code: str | None = None
    network_advice_code: str | None = None

    @model_validator(mode="after")
    def _failed_needs_code(self) -> AttemptIn:
        if self.outcome is vocab.Outcome.FAILED and not self.decline_code:
            raise ValueError("a failed attempt needs a decline_code")
        return self


class MessageIn(BaseModel):
    """A message already sent about the payment."""

    model_config = ConfigDict(extra="forbid")

    message_id: str = Field(min_length=1, max_length=255)
    sent_at: AwareDatetime
    channel: vocab.Channel
    sender: vocab.Sender


class DecisionRequest(BaseModel):
    """One failed payment's context: inline, or just its id when the service holds it."""

    model_config = ConfigDict(extra="forbid")

    payment: PaymentIn | None = None
    payment_id: str | None = Field(default=None, min_length=1, max_length=255)
    attempts: list[AttemptIn] = Field(default_factory=list, max_length=100)
    messages: list[MessageIn] = Field(default_factory=list, max_length=100)
    now: AwareDatetime | None = Field(default=None, description="Decision time; default now.")

    @model_validator(mode="after")
    def _one_way_to_name_the_payment(self) -> DecisionRequest:
        if (self.payment is None) == (self.payment_id is None):
            raise ValueError("give exactly one of payment (the context) or payment_id")
        if self.payment is not None:
            for a in self.attempts:
                if a.attempted_at < self.payment.failed_at:
                    raise ValueError(f"attempt {a.attempt_number} is before the payment failed")
        return self


class BatchDecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[DecisionRequest] = Field(min_length=1, max_length=1000)


class RetryOut(BaseModel):
    at_utc: datetime
    at_local: datetime = Field(description="The same moment in the customer's timezone.")
    local_timezone: str


class DecisionOut(BaseModel):
    """The next action for one payment."""

    payment_id: str
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
