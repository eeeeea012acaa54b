"""Writes `policies.md`, the billing knowledge base, from ABCD's agent guidelines and kb.

    python knowledge/billing/build_policies.py

Each billing-related ABCD subflow (charges and payment, refunds and returns, disputes) becomes
one `##` section holding the guideline text verbatim and the kb's required action sequence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ABCD = ROOT / "data" / "abcd"
OUT = Path(__file__).with_name("policies.md")

BILLING_SUBFLOWS = {
    "subscription_inquiry": ["status_due_amount", "status_due_date", "manage_pay_bill", "manage_extension",
                             "manage_dispute_bill"],
    "order_issue": ["status_mystery_fee", "status_payment_method"],
    "manage_account": ["status_credit_missing", "manage_payment_method"],
    "troubleshoot_site": ["credit_card"],
    "shipping_issue": ["cost"],
    "product_defect": ["refund_initiate", "refund_update", "refund_status", "return_stain", "return_color",
                       "return_size"],
    "purchase_dispute": ["bad_price_competitor", "bad_price_yesterday", "out_of_stock_general",
                         "out_of_stock_one_item", "promo_code_invalid", "promo_code_out_of_date",
                         "mistimed_billing_already_returned", "mistimed_billing_never_bought"],
}

# Provenance lives in README.md: text under the title would be indexed as a passage of its own.
HEADER = "# Billing policies\n"


def section(flow_name: str, flow: dict[str, Any], name: str, subflow: dict[str, Any], actions: list[str]) -> str:
    opening, closing = subflow["instructions"]
    lines = [f"## {flow_name} > {name}", "", f"{flow_name}: {flow['description']}.", "", opening, ""]
    for number, action in enumerate(subflow["actions"], start=1):
        button = f"[{action['button']}] " if action["button"] != "N/A" else ""
        lines.append(f"{number}. {button}{action['text'].strip()}")
        lines.extend(f"   - {point.strip()}" for point in action["subtext"])
    lines += ["", closing, "", f"Required actions, in order: {', '.join(actions)}.", ""]
    return "\n".join(lines)


def main() -> None:
    guidelines = json.loads((ABCD / "guidelines.json").read_text(encoding="utf-8"))
    ontology = json.loads((ABCD / "ontology.json").read_text(encoding="utf-8"))["intents"]["subflows"]
    kb = json.loads((ABCD / "kb.json").read_text(encoding="utf-8"))
    sections = [HEADER]
    for flow_name, flow in guidelines.items():
        flow_id = "_".join(flow_name.lower().replace("-", " ").split())
        # The guidelines list a flow's subflows in the ontology's order.
        for (name, subflow), label in zip(flow["subflows"].items(), ontology[flow_id], strict=True):
            if label in BILLING_SUBFLOWS.get(flow_id, []):
                sections.append(section(flow_name, flow, name, subflow, kb[label]))
    OUT.write_text("\n".join(sections), encoding="utf-8")


if __name__ == "__main__":
    main()
