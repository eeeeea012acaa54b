"""Knowledge bases that ground answers for the intents that need policy text (billing).

A route's `retrieval: {knowledge: NAME, top_k: K, min_score: S}` searches the named knowledge base
with the customer's latest message and injects `render_passages(...)` into the prompt.
"""

from laneway.retrieval._cli import add_commands
from laneway.retrieval._knowledge_base import KnowledgeBase
from laneway.retrieval._passage import Passage
from laneway.retrieval._render import STYLES, render_passages

__all__ = ["STYLES", "KnowledgeBase", "Passage", "add_commands", "render_passages"]
