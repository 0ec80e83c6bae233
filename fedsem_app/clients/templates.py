"""Prompt templates: the text that precedes an answer, for training and generation alike.

Runs on the client.

Training and generation must see exactly the same prompt text, so both go through
:func:`format_prompt`. Templates live in a small registry keyed by the names the run
config accepts (``model.template``).
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

from fedsem_app.registry import Registry

TemplateFn = Callable[[PreTrainedTokenizerBase, str], str]

TEMPLATES: Registry[TemplateFn] = Registry("template", key="model.template")

ALPACA_HEADER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@TEMPLATES.register("plain")
def plain_template(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """Format as ``Question: ...`` / ``Answer:``; works with any tokenizer."""
    return f"Question: {prompt}\nAnswer: "


@TEMPLATES.register("alpaca")
def alpaca_template(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """Format the Alpaca instruction prompt used by Shepherd / FedIT."""
    return f"{ALPACA_HEADER}\n\n### Instruction:\n{prompt}\n\n### Response:\n"


@TEMPLATES.register("chat")
def chat_template(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """Apply the tokenizer's chat template to one user turn; ``plain`` if it has none.

    Base models (e.g. the packaged Gemma-3-270M) ship no chat template, hence the fallback.
    """
    if not getattr(tokenizer, "chat_template", None):
        return plain_template(tokenizer, prompt)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, template: str) -> str:
    """Return the text that precedes the answer to ``prompt`` under ``template``.

    Parameters
    ----------
    tokenizer
        The model's tokenizer (the ``chat`` template reads its chat template).
    prompt
        The question or instruction.
    template
        A registered template name: ``chat``, ``plain`` or ``alpaca``.

    Raises
    ------
    ValueError
        If ``template`` is not registered.

    """
    try:
        fn = TEMPLATES[template]
    except KeyError:
        raise ValueError(
            f"unknown prompt template {template!r}; choose one of {', '.join(sorted(TEMPLATES))}"
        ) from None
    return fn(tokenizer, prompt)
