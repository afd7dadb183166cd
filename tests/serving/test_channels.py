"""What a recovery email says: amounts in major units, and the 3D Secure reminder's link."""

from __future__ import annotations

from reclaim.serving.channels import OutgoingMessage, SmtpEmail


def _message(**kw) -> OutgoingMessage:
    base = {
        "key": "act_1", "payment_id": "in_123", "account_id": "acct_1", "customer_id": "cus_1",
        "channel": "email", "sender": "account", "amount": 4900, "currency": "usd",
        "branding": {"display_name": "Yoga", "update_payment_url":
                     "https://yoga.example/card/%7Bpayment_id%7D"},
        "recipient": "ada@example.com",
    }  # fmt: skip
    return OutgoingMessage(**{**base, **kw})


def test_a_declined_payment_email_names_the_amount_and_the_card_link() -> None:
    email = SmtpEmail("127.0.0.1", 25, "no-reply@platform.example").compose(_message())
    assert email["Subject"] == "Yoga payment of 49.00 USD did not go through"
    assert "https://yoga.example/card/in_123" in email.get_content()


def test_zero_decimal_currencies_are_not_divided() -> None:
    email = SmtpEmail("127.0.0.1", 25, "x@y.example").compose(_message(amount=4900, currency="jpy"))
    assert "4,900 JPY" in email["Subject"]


def test_the_3ds_reminder_asks_the_customer_to_confirm_on_the_hosted_page() -> None:
    brand = {"display_name": "Yoga", "authenticate_url": "https://pay.example/3ds/{payment_id}"}
    email = SmtpEmail("127.0.0.1", 25, "x@y.example").compose(
        _message(purpose="authenticate", branding=brand)
    )
    text = email.get_content()
    assert email["Subject"] == "Confirm your payment of 49.00 USD to Yoga"
    assert "https://pay.example/3ds/in_123" in text and "3D Secure" in text
    assert "try again" not in text  # no retry is promised: only the customer can confirm
