"""The prompt: one named template and a builder that fits it into the model's context.

DialoGPT was trained on conversation threads whose turns are joined by the EOS token; it writes
the next turn. The default template, ``dialogpt-grounded``, renders::

    {history turn 1}<eos>{history turn 2}<eos>…{question}<eos>{snippet 1} {snippet 2}…<eos>

The snippet text is the last turn before the answer, directly in front of it: DialoGPT leans on
the nearest turn, so the reply it writes draws on the snippets, and because the prompt ends with
EOS the model starts a new turn (the answer) instead of completing the question or a snippet.

Fitting: the question is never cut (a question that cannot fit is refused). Snippets come first
in the remaining budget, most relevant first, so the least relevant (last) ones are dropped and
the last one kept may be shortened; history then fills what is left, newest first, so the oldest
turns go. Room for ``max_new_tokens`` is always kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from generator_service.errors import PromptTooLong

Role = Literal["user", "assistant"]
# Renders chat messages with the model's own template (``tokenizer.apply_chat_template``).
ChatFormat = Callable[[list[dict[str, str]]], str]
# A shortened snippet shorter than this is noise rather than context.
MIN_SNIPPET_TOKENS = 8
# Control tokens of the common chat formats (GPT-2, ChatML, Llama 3...), written as text: taken
# out of what users and documents say even when the tokenizer is not known (a remote model).
_CONTROL_TOKEN_TEXT = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>")


def neutralize(text: str, control_tokens: Sequence[str] = ()) -> str:
    """Remove control tokens from untrusted text, so that it cannot end or forge a turn.

    A document or a question holding "<|im_end|>" would otherwise be tokenized as the model's
    own end of turn; removed, the rest of the text reads the same.
    """
    for token in control_tokens:
        if token and token in text:
            text = text.replace(token, "")
    return _CONTROL_TOKEN_TEXT.sub("", text)


class TokenCounter(Protocol):
    """Counts and cuts text in the model's own tokens."""

    def count(self, text: str) -> int:
        """Return the number of tokens in ``text`` (no special tokens added)."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """Return the longest prefix of ``text`` that holds at most ``max_tokens`` tokens."""
        ...


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str


@dataclass(frozen=True)
class PromptTemplate:
    """How question, snippets and history become one prompt; see the module docstring."""

    name: str
    description: str
    # None means the model's EOS token, DialoGPT's turn separator.
    turn_separator: str | None = None
    context_format: str = "{snippets}"
    snippet_separator: str = " "
    user_format: str = "{text}"
    assistant_format: str = "{text}"
    question_format: str = "{text}"
    context_position: Literal["after_question", "before_history"] = "after_question"
    end_with_separator: bool = True
    answer_prefix: str = ""
    # Chat-style backends get this as the system message, with the context appended.
    system_instruction: str = (
        "Answer the user's question using only the context below. "
        "If the context does not contain the answer, say that you do not know."
    )
    # Rendered by the model's own chat template rather than by the fields above.
    chat: bool = False
    # Where chat messages carry the snippets: small models follow them better in the user turn.
    context_turn: Literal["system", "user"] = "system"

    def separator(self, eos_token: str) -> str:
        return eos_token if self.turn_separator is None else self.turn_separator

    def context_text(self, snippets: Sequence[str]) -> str | None:
        if not snippets:
            return None
        return self.context_format.format(snippets=self.snippet_separator.join(snippets))

    def turn_text(self, turn: Turn) -> str:
        fmt = self.user_format if turn.role == "user" else self.assistant_format
        return fmt.format(text=turn.text)

    def render(
        self,
        question: str,
        snippets: Sequence[str],
        history: Sequence[Turn],
        eos_token: str,
        chat_format: ChatFormat | None = None,
    ) -> str:
        """Render the prompt text the model continues."""
        if self.chat:
            if chat_format is None:
                raise ValueError(f"template {self.name!r} needs a model with a chat template")
            return chat_format(self.messages(question, snippets, history))
        turns = [self.turn_text(t) for t in history]
        turns.append(self.question_format.format(text=question))
        context = self.context_text(snippets)
        if context is not None:
            if self.context_position == "after_question":
                turns.append(context)
            else:
                turns.insert(0, context)
        sep = self.separator(eos_token)
        text = sep.join(turns)
        if self.end_with_separator:
            text += sep
        return text + self.answer_prefix

    def messages(
        self, question: str, snippets: Sequence[str], history: Sequence[Turn]
    ) -> list[dict[str, str]]:
        """Render the same prompt as chat messages (chat templates and chat-completion APIs)."""
        system = self.system_instruction
        context = "\n\n".join(snippets)
        user = question
        if context and self.context_turn == "system":
            system += "\n\nContext:\n" + context
        elif context:
            user = f"Context:\n{context}\n\nQuestion: {question}"
        out = [{"role": "system", "content": system}]
        out += [{"role": t.role, "content": t.text} for t in history]
        out.append({"role": "user", "content": user})
        return out


TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        PromptTemplate(
            name="dialogpt-grounded",
            description="History, question, then the snippets as the turn right before the answer; "
            "turns joined by EOS.",
        ),
        PromptTemplate(
            name="dialogpt-context-first",
            description="Snippets as the first turn, then history and the question; EOS-joined.",
            context_position="before_history",
        ),
        PromptTemplate(
            name="instruct",
            description="Plain-text instruction prompt for instruction-tuned completion models.",
            turn_separator="\n",
            context_format="Answer the question using only this context.\n\nContext:\n{snippets}\n",
            snippet_separator="\n",
            user_format="User: {text}",
            assistant_format="Assistant: {text}",
            question_format="Question: {text}",
            context_position="before_history",
            answer_prefix="Answer:",
        ),
        PromptTemplate(
            name="chat",
            description="The model's own chat template: an instruction as the system turn, the "
            "history, then the snippets and the question in the last user turn.",
            chat=True,
            context_turn="user",
            system_instruction=(
                "You answer questions about the user's documents. Answer in one or two short "
                "sentences, using only the context in the user's message, and copy names, "
                "numbers and codes exactly as the context writes them. If the context does not "
                "answer the question, say that the documents do not say."
            ),
        ),
    )
}
# Picks "chat" for a model whose tokenizer has a chat template, else "dialogpt-grounded".
AUTO_TEMPLATE = "auto"


def choose_template(name: str, has_chat_template: bool) -> PromptTemplate:
    """Return the named template; ``auto`` follows whether the model has a chat template."""
    if name == AUTO_TEMPLATE:
        return TEMPLATES["chat" if has_chat_template else "dialogpt-grounded"]
    template = get_template(name)
    if template.chat and not has_chat_template:
        raise ValueError(f"template {name!r} needs a model whose tokenizer has a chat template")
    return template


def get_template(name: str) -> PromptTemplate:
    """Return a registered template by name."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}") from None


@dataclass(frozen=True)
class Prompt:
    """A fitted prompt, with what was kept and dropped to fit it."""

    text: str
    token_count: int
    question: str
    snippets: tuple[str, ...]
    history: tuple[Turn, ...]
    dropped_snippets: int = 0
    truncated_snippet: bool = False
    dropped_history: int = 0
    messages: list[dict[str, str]] = field(default_factory=list, compare=False)


class PromptBuilder:
    """Build prompts from one template, fitted to ``context_tokens`` minus the answer's room."""

    def __init__(
        self,
        template: PromptTemplate,
        counter: TokenCounter,
        *,
        context_tokens: int,
        eos_token: str,
        max_snippets: int = 8,
        max_history_turns: int = 8,
        chat_format: ChatFormat | None = None,
    ) -> None:
        if template.chat and chat_format is None:
            raise ValueError(f"template {template.name!r} needs a model with a chat template")
        self.chat_format = chat_format
        self.template = template
        self.counter = counter
        self.context_tokens = context_tokens
        self.eos_token = eos_token
        self.max_snippets = max_snippets
        self.max_history_turns = max_history_turns

    def _count(self, question: str, snippets: Sequence[str], history: Sequence[Turn]) -> int:
        return self.counter.count(self._render(question, snippets, history))

    def _render(self, question: str, snippets: Sequence[str], history: Sequence[Turn]) -> str:
        return self.template.render(question, snippets, history, self.eos_token, self.chat_format)

    def build(
        self,
        question: str,
        snippets: Sequence[str],
        history: Sequence[Turn] = (),
        *,
        max_new_tokens: int,
    ) -> Prompt:
        """Fit question, snippets and history into the budget; raise when the question can't fit."""
        budget = self.context_tokens - max_new_tokens
        controls = getattr(self.counter, "control_tokens", ())
        question = neutralize(question, controls).strip()
        snippets = [neutralize(s, controls).strip() for s in snippets]
        snippets = [s for s in snippets if s][: self.max_snippets]
        offered_snippets = len(snippets)
        history = [Turn(t.role, neutralize(t.text, controls).strip()) for t in history]
        history = [t for t in history if t.text]
        history = history[-self.max_history_turns :] if self.max_history_turns else []
        offered_history = len(history)

        base = self._count(question, [], [])
        if base > budget:
            raise PromptTooLong(
                f"The question takes {base} tokens; with max_new_tokens={max_new_tokens} the "
                f"model's context of {self.context_tokens} tokens leaves room for {budget}.",
                details=[{"field": "question", "message": "too long for the model's context"}],
            )

        # Snippets, most relevant first: keep whole ones while they fit, then shorten one.
        kept: list[str] = []
        truncated = False
        for snippet in snippets:
            if self._count(question, [*kept, snippet], []) <= budget:
                kept.append(snippet)
                continue
            room = budget - self._count(question, [*kept, ""], [])
            if room >= MIN_SNIPPET_TOKENS:
                cut = self._shorten(question, kept, snippet, room, budget)
                if cut:
                    kept.append(cut)
                    truncated = True
            break

        # History, newest first, in whole turns.
        kept_history: list[Turn] = []
        for turn in reversed(history):
            candidate = [turn, *kept_history]
            if self._count(question, kept, candidate) > budget:
                break
            kept_history = candidate

        text = self._render(question, kept, kept_history)
        return Prompt(
            text=text,
            token_count=self.counter.count(text),
            question=question,
            snippets=tuple(kept),
            history=tuple(kept_history),
            dropped_snippets=offered_snippets - len(kept),
            truncated_snippet=truncated,
            dropped_history=offered_history - len(kept_history),
            messages=self.template.messages(question, kept, kept_history),
        )

    def _shorten(
        self, question: str, kept: list[str], snippet: str, room: int, budget: int
    ) -> str | None:
        # Token counts are not exactly additive across joins: shrink until the whole fits.
        while room >= MIN_SNIPPET_TOKENS:
            cut = self.counter.truncate(snippet, room).rstrip()
            if cut and self._count(question, [*kept, cut], []) <= budget:
                return cut
            room -= max(1, room // 8)
        return None
