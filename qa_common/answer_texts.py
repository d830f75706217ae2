"""Fixed answer texts more than one service needs to agree on."""

# What the service says when the documents do not answer. A fine-tuned generator learns to
# write exactly this sentence (``generator_service.finetune``), and the gateway reads a
# generated answer that is this sentence as the model declining (``no_answer``).
DECLINE_TEXT = "I could not find this in the documents."

# The gateway's no-answer reply: the decline, and why sources are still listed.
NO_ANSWER_TEXT = (
    f"{DECLINE_TEXT} The closest passages are listed below, but none of them answers the question."
)


def is_decline(text: str) -> bool:
    """Tell whether a generated answer is the model declining: it opens with the decline text."""
    normalized = " ".join(text.split()).lower()
    return normalized.startswith(DECLINE_TEXT.lower())
