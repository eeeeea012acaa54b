"""How many billing emails reach a billing intent when they quote the thread they answer.

200 Bitext training rows of the billing route's intents (examples/case-study-final.yaml), each written as a
reply: the request, then a mail client's "On ... wrote:" line and a quoted agent reply (the response of
another, non-billing row). Each is classified by the shipped model three ways: the request alone, the whole
email as it comes (the first 2,000 characters, subject first), and what the gateway reads of an email
(`Signals.customer_text`: the text before the quoted thread, without quoted lines). The same rows are also
written as inline replies, the request under one quoted line of the agent's question, and as replies
written under the quoted thread (the "On ... wrote:" line and the quote first), and read as the gateway
reads them.

Run: PYTHONPATH=src .venv/bin/python bench/bench_quoted_emails.py [--rows 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from laneway.intents import load_default
from laneway.signals import CUSTOMER_TEXT_CHARS, Signals

BILLING = {"billing_dispute", "payment_issue", "get_refund", "track_refund", "check_refund_policy", "check_invoice",
           "get_invoice", "check_cancellation_fee"}
DATA = Path(__file__).resolve().parent.parent / "data" / "bitext-customer-support" / "bitext_train.csv"
SUBJECT = "Re: your order"
QUESTION = "Could you tell us a bit more about what happened?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    csv.field_size_limit(10**7)
    with DATA.open(encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    rng = random.Random(args.seed)
    others = [r for r in rows if r["intent"] not in BILLING]
    model = load_default()
    reached = {"the request alone": 0, "the whole email": 0, "what the gateway reads": 0,
               "an inline reply, as the gateway reads it": 0, "a reply under the quote, as the gateway reads it": 0}
    for row in rng.sample([r for r in rows if r["intent"] in BILLING], args.rows):
        request = f"Hi,\n\n{row['instruction']}\n\nThanks,\nAnna\n\n"
        quoted = "\n".join("> " + line for line in rng.choice(others)["response"].splitlines())
        email = f"{request}On Mon, 3 Mar 2025 at 10:02, Support <support@example.com> wrote:\n{quoted}"
        reached["the request alone"] += model.classify(f"{SUBJECT}\n{request}")[0] in BILLING
        reached["the whole email"] += model.classify(f"{SUBJECT}\n{email}"[:CUSTOMER_TEXT_CHARS])[0] in BILLING
        signals = Signals([{"role": "user", "content": email}], channel="email", metadata={"subject": SUBJECT},
                          intent_fn=model.classify)
        reached["what the gateway reads"] += signals.intent in BILLING
        inline = (f"Hi, my answers are below.\n\nOn Mon, 3 Mar 2025 at 10:02, Support <support@example.com> wrote:\n"
                  f"> {QUESTION}\n\n{row['instruction']}\n\nThanks,\nAnna\n")
        signals = Signals([{"role": "user", "content": inline}], channel="email", metadata={"subject": SUBJECT},
                          intent_fn=model.classify)
        reached["an inline reply, as the gateway reads it"] += signals.intent in BILLING
        under = f"On Mon, 3 Mar 2025 at 10:02, Support <support@example.com> wrote:\n{quoted}\n\n{request}"
        signals = Signals([{"role": "user", "content": under}], channel="email", metadata={"subject": SUBJECT},
                          intent_fn=model.classify)
        reached["a reply under the quote, as the gateway reads it"] += signals.intent in BILLING
    for text, count in reached.items():
        print(f"{text}: {count} of {args.rows} reach a billing intent ({count / args.rows:.1%})")


if __name__ == "__main__":
    main()
