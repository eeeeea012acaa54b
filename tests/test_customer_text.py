"""What the intent classifier and retrieval read of a request: the latest customer message, an email's own words
without the thread it quotes, text parts one a line."""

from __future__ import annotations

import pytest


def test_the_classifier_and_retrieval_read_the_start_of_a_huge_message_only() -> None:
    """Both cost time in proportion to their text, on the event loop: a 5 MB message held every other
    request up for a second."""
    from laneway.signals import CUSTOMER_TEXT_CHARS, Signals

    read: list[str] = []
    huge = "I was charged twice for my order. " + "Quoted earlier mail. " * 250_000
    signals = Signals([{"role": "user", "content": huge}], channel="email", metadata={"subject": "Double charge"},
                      intent_fn=lambda text: (read.append(text), ("billing_dispute", 0.9))[1])
    assert signals.intent == "billing_dispute"
    assert read == [signals.customer_text()] == [f"Double charge\n{huge}"[:CUSTOMER_TEXT_CHARS]]


AGENT_REPLY = ("Thank you for contacting us. We have looked into your account and your parcel left our warehouse "
               "on Monday; the courier will deliver it within three working days. Kind regards, the support team")


@pytest.mark.parametrize("quote", [
    "On Mon, 3 Mar 2025 at 10:02, Support <support@example.com> wrote:\n> {reply}",
    "On Mon, 3 Mar 2025 at 10:02, Support <\nsupport@example.com> wrote:\n> {reply}",
    "-----Original Message-----\nFrom: Support\nSent: Monday\n\n{reply}",
    "From: Support <support@example.com>\nSent: Monday, 3 March 2025 10:02\nTo: Anna\n\n{reply}",
    "> {reply}",
])
def test_an_email_is_classified_by_its_own_words_not_the_thread_it_quotes(quote: str) -> None:
    """The quoted agent reply, longer than the customer's new request, outweighed it: billing replies went to
    the triage route, ungrounded."""
    from laneway.intents import load_default
    from laneway.signals import Signals

    request = "Hi,\n\nI still have not got my refund for order 1182, where is it?\n\nThanks,\nAnna\n\n"
    email = request + quote.format(reply=AGENT_REPLY)
    read: list[str] = []
    signals = Signals([{"role": "user", "content": email}], channel="email", metadata={"subject": "Re: order 1182"},
                      intent_fn=lambda text: (read.append(text), load_default().classify(text))[1])
    assert read == [] and signals.intent == "track_refund"
    assert read == [f"Re: order 1182\n{request}"]
    chat = Signals([{"role": "user", "content": email}], channel="chat")  # a chat message is read whole
    assert chat.customer_text() == email


def test_an_inline_reply_is_read_without_the_lines_it_quotes_not_cut_at_the_first() -> None:
    """A reply that answers a quoted question under it was cut at that first quoted line: nothing of the
    customer's request was left to classify."""
    from laneway.intents import load_default
    from laneway.signals import Signals

    email = ("Hi,\n\n> Could you tell us a bit more about what happened?\n\nI still have not got my refund for order "
             "1182, where is it?\n\nThanks,\nAnna\n")
    signals = Signals([{"role": "user", "content": email}], channel="email", intent_fn=load_default().classify)
    assert signals.customer_text() == ("Hi,\n\n\nI still have not got my refund for order 1182, where is it?\n\n"
                                       "Thanks,\nAnna\n")
    assert signals.intent == "track_refund"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_an_inline_reply_under_a_greeting_and_the_clients_attribution_line_is_read_between_the_quotes(
        newline: str) -> None:
    """What came before the thread was read, and only that: a greeting above a mail client's "On ... wrote:"
    line, with the request written between the quoted lines, was classified as the greeting (`unknown`)."""
    from laneway.intents import load_default
    from laneway.signals import Signals

    email = newline.join([
        "Hi, my answers are below.", "",
        "On Mon, 3 Mar 2025 at 10:02, Support <support@example.com> wrote:",
        "> Could you tell us a bit more about what happened?", "",
        "I was charged twice for my order, please refund the duplicate charge.", "",
        "> Anything else we can help with?"])
    signals = Signals([{"role": "user", "content": email}], channel="email", metadata={"subject": "Re: your order"},
                      intent_fn=load_default().classify)
    text = signals.customer_text()
    assert "I was charged twice" in text and "Hi, my answers are below." in text
    assert "Could you tell us" not in text and "wrote:" not in text and "Anything else" not in text
    assert signals.intent == "billing_dispute"


@pytest.mark.parametrize("quote_lines", [3, 40])
@pytest.mark.parametrize("attribution", ["On Mon, 3 Mar 2025 at 10:02, Support <support@example.com> wrote:\n", ""])
def test_a_reply_written_under_the_quote_is_read_not_the_quote(attribution: str, quote_lines: int) -> None:
    """With the quote first, the whole email was read, quote included; and a quote past the 2,000 characters
    read left nothing of the reply: billing replies were classified by the agent's shipping answer."""
    from laneway.intents import load_default
    from laneway.signals import CUSTOMER_TEXT_CHARS, Signals

    reply = "I was charged twice for this order, please refund the duplicate charge on my card.\nAnna\n"
    email = attribution + f"> {AGENT_REPLY}\n" * quote_lines + "\n" + reply
    assert (quote_lines > 3) == (len(email) - len(reply) > CUSTOMER_TEXT_CHARS)
    signals = Signals([{"role": "user", "content": email}], channel="email", intent_fn=load_default().classify)
    assert signals.customer_text().strip() == reply.strip()
    assert signals.intent == "billing_dispute"


def test_text_parts_are_read_one_a_line_not_run_together() -> None:
    """Parts joined end to end ran one's last word into the next one's first: "chargedtwice" found no passage,
    and an Anthropic or Gemini model's system prompt read "original cardNever promise"."""
    from laneway.chat import ChatRequest
    from laneway.providers.anthropic import request_body
    from laneway.signals import Signals

    parts = [{"type": "text", "text": "I was charged"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "twice for my order"}]
    assert Signals([{"role": "user", "content": parts}]).customer_text() == "I was charged\ntwice for my order"
    system = [{"type": "text", "text": "Refunds go to the original card"}, {"type": "text", "text": "Never promise"}]
    body = request_body("claude", ChatRequest("claude", [{"role": "system", "content": system},
                                                         {"role": "user", "content": "hi"}]), False)
    assert "Refunds go to the original card\nNever promise" in str(body["system"])


def test_an_older_thread_below_a_quoted_one_is_cut_off_not_read_as_the_customers() -> None:
    """Past a thread quoted line by line, every unquoted line was read: an older Outlook block below it (a
    password question) outweighed the customer's new request."""
    from laneway.intents import load_default
    from laneway.signals import Signals

    email = ("I was charged twice for my order, please refund the duplicate charge.\n\n"
             "On Mon, 3 Mar 2025 at 10:02, Support <support@example.com> wrote:\n"
             f"> {AGENT_REPLY}\n\n"
             "-----Original Message-----\nFrom: Anna\nSent: Sunday\n\n"
             "I forgot my password and cannot log in to reset it, how do I recover my password?\n")
    signals = Signals([{"role": "user", "content": email}], channel="email", intent_fn=load_default().classify)
    assert "password" not in signals.customer_text()
    assert signals.intent == "billing_dispute"


@pytest.mark.parametrize("email", [
    ("Hi, my answers are below.\n\nOn Mon, 3 Mar 2025 at 10:02, Support <support@example.com> wrote:\n"
     "> Which invoice was it?\n\nOn the invoice 12345: I was charged twice, please refund the duplicate charge.\n"
     "> On Sun, 2 Mar 2025 at 09:00, Anna <anna@example.com> wrote:\n>> my order\n"),
    ("I was charged twice for my order.\n\nOn Mon, 3 Mar 2025 at 10:02, Support <support@example.com> wrote:\n"
     "> Anything else?\n\nOn Friday your agent wrote:\nthe refund is coming. Please refund the duplicate charge.\n"),
])
def test_a_customers_line_that_reads_like_an_attribution_is_not_taken_for_an_older_thread(email: str) -> None:
    """Below a quoted thread, the cut for an older one took a customer's line starting with "On" (run into a
    quoted "> On ... wrote:" under it, or ending in "wrote:") for one, and the request went with it."""
    from laneway.signals import Signals

    text = Signals([{"role": "user", "content": email}], channel="email").customer_text()
    assert "refund the duplicate charge" in text
