"""A causal language model with one LoRA adapter: train, generate, score, swap adapters."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from logging import INFO

import numpy as np
import peft
import torch
import torch.nn.functional as F
from flwr.common.logger import log
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import GenerationConfig as HFGenerationConfig
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedsem_app.clients.templates import format_prompt
from fedsem_app.config import GenerationConfig, LoraConfig, TrainConfig

IGNORE_INDEX = -100  # label value that the loss skips (prompt and padding positions)
ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer except the output head

# Default LoRA targets per architecture: all attention projections. Architectures not
# listed fall back to peft's own mapping, and families peft does not know either to
# every linear layer but the output head (peft's "all-linear").
LORA_TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
}

# Extra peft LoraConfig arguments per architecture: GPT-2 stores Conv1D weights transposed.
LORA_EXTRA_KWARGS: dict[str, dict[str, object]] = {
    "gpt2": {"fan_in_fan_out": True},
}


def make_peft_config(lora: LoraConfig, architecture: str) -> peft.LoraConfig:
    """Translate the app's :class:`LoraConfig` into a peft ``LoraConfig``.

    Parameters
    ----------
    lora
        Rank, alpha, dropout and target modules (empty: the architecture's default).
    architecture
        Model family, used to pick default target modules.

    Notes
    -----
    Without ``lora.target-modules`` the targets are, in this order: the app's defaults
    (:data:`LORA_TARGET_MODULES`), peft's own per-family mapping, and for a family
    neither knows, every linear layer but the output head (``"all-linear"``). Any
    causal LM thus trains without naming its modules; the client logs which it adapted.

    """
    if lora.target_modules:
        targets: list[str] | None = list(lora.target_modules)
    elif architecture in LORA_TARGET_MODULES:
        targets = list(LORA_TARGET_MODULES[architecture])
    elif architecture in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        targets = None  # peft picks its own default for this model type
    else:
        targets = ALL_LINEAR
    return peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM,
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        **LORA_EXTRA_KWARGS.get(architecture, {}),
    )


def adapted_module_kinds(model: peft.PeftModel) -> list[str]:
    """Sorted last name parts of the modules LoRA adapted (``q_proj``, ``c_attn``, ...)."""
    return sorted({name.rsplit(".", 1)[-1] for name in model.targeted_module_names})


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a templated prompt, with the tokenizer's BOS exactly once.

    Chat templates often write the BOS token into the text themselves; adding special
    tokens again would give the model a doubled BOS it never saw in pre-training.
    """
    has_bos = bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)
    return list(tokenizer(text, add_special_tokens=not has_bos)["input_ids"])


def build_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt_text: str,
    answer: str,
    max_len: int,
    *,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    """Tokenize one training pair with the loss on the answer tokens only.

    Parameters
    ----------
    tokenizer
        The model's tokenizer (needs an EOS token).
    prompt_text
        The templated prompt (see :func:`~fedsem_app.clients.templates.format_prompt`).
    answer
        The reference answer; EOS is appended so the model learns to stop.
    max_len
        Maximum sequence length. Too-long pairs keep the end of the prompt (the part
        next to the answer) and the start of the answer, and at least half of the
        window stays for the answer, so every example has answer tokens to learn.
    add_eos
        Append EOS (default). False for a text that was cut off at a length cap (an
        unfinished generated answer): training on it must not teach the model to
        stop mid-sentence.

    Returns
    -------
    dict
        ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on prompt positions,
        the input ids on answer positions).

    """
    prompt_ids = encode_prompt(tokenizer, prompt_text)
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if add_eos:
        answer_ids.append(tokenizer.eos_token_id)
    if len(prompt_ids) + len(answer_ids) > max_len:
        keep_prompt = min(len(prompt_ids), max(max_len - len(answer_ids), max_len // 2))
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
        answer_ids = answer_ids[: max_len - keep_prompt]
    return {
        "input_ids": prompt_ids + answer_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(answer_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def pad_batch(
    examples: Sequence[dict[str, list[int]]], pad_id: int, side: str
) -> dict[str, torch.Tensor]:
    """Pad token-id lists to one length: ``side="right"`` for training, ``"left"`` to generate.

    Padding gets attention mask 0 and (when present) label ``-100``.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(ex["input_ids"]) for ex in examples)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    batch: dict[str, list[list[int]]] = {key: [] for key in examples[0]}
    for ex in examples:
        for key, values in ex.items():
            padding = [fill[key]] * (width - len(values))
            batch[key].append(padding + values if side == "left" else values + padding)
    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


def sample_batches(
    rng: np.random.Generator, num_examples: int, batch_size: int, steps: int
) -> list[list[int]]:
    """Draw the indices of ``steps`` batches from shuffled passes over the examples.

    Every example is used once before any is repeated, also when there are fewer
    examples than ``batch_size``.
    """
    order: list[int] = []
    batches = []
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(rng.permutation(num_examples).tolist())
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches


def mixed_batches(
    rng: np.random.Generator,
    num_private: int,
    num_pseudo: int,
    batch_size: int,
    steps: int,
    pseudo_share: float,
) -> list[list[int]]:
    """Batches over ``num_private`` private then ``num_pseudo`` pseudo-labelled examples.

    With ``pseudo_share == 0`` (or no pseudo-labels) every batch is drawn uniformly
    from the union, as :func:`sample_batches` does. Otherwise each batch holds
    ``round(pseudo_share * batch_size)`` pseudo-labelled examples (at least one,
    at most the whole batch), each group drawn from its own shuffled passes; indices
    of pseudo-labelled examples are offset by ``num_private``.
    """
    if pseudo_share <= 0 or num_pseudo == 0 or num_private == 0:
        return sample_batches(rng, num_private + num_pseudo, batch_size, steps)
    n_pseudo = min(batch_size, max(1, round(pseudo_share * batch_size)))
    pseudo = sample_batches(rng, num_pseudo, n_pseudo, steps)
    if n_pseudo == batch_size:
        return [[num_private + i for i in b] for b in pseudo]
    private = sample_batches(rng, num_private, batch_size - n_pseudo, steps)
    return [a + [num_private + i for i in b] for a, b in zip(private, pseudo, strict=True)]


def answer_length(token_ids: Sequence[int], eos_ids: Sequence[int]) -> int:
    """Count generated tokens up to and including the first EOS (all if none)."""
    for position, token in enumerate(token_ids):
        if token in eos_ids:
            return position + 1
    return len(token_ids)


def answer_confidence(
    token_ids: Sequence[int], logprobs: Sequence[float], eos_ids: Sequence[int]
) -> float:
    """Mean log-probability of the generated tokens up to and including the first EOS.

    An empty answer (EOS first) scores the log-probability of that EOS, so the result
    is always a finite number ``<= 0``.
    """
    n = max(answer_length(token_ids, eos_ids), 1)
    return float(np.mean(np.asarray(logprobs[:n], dtype=np.float64)))


@dataclass(frozen=True)
class Answers:
    """Generated answers, in prompt order.

    Attributes
    ----------
    texts
        Stripped answer texts (new tokens only, special tokens removed).
    confidences
        Mean log-probability of each answer's tokens up to and including EOS.
    finished
        Whether the model ended the answer itself (generated EOS) rather than
        hitting ``max_new_tokens``.
    """

    texts: list[str]
    confidences: list[float]
    finished: list[bool]


class GreedyLogProbRecorder(LogitsProcessor):
    """Record, at each generation step, the log-probability of the greedy (argmax) token.

    Kept as one number per sequence and step: asking ``generate`` for its logits would
    hold a vocabulary-sized tensor per step (over 0.5 GB for Gemma-3 at 16 x 32 tokens).
    It must run last and only under greedy decoding, where the chosen token is the
    argmax of the scores it sees.
    """

    def __init__(self) -> None:
        self._steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        """Store the top log-probability of each row; leave ``scores`` unchanged."""
        self._steps.append(torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values)
        return scores

    def logprobs(self) -> np.ndarray:
        """Return the recorded log-probabilities, shape (sequences, steps)."""
        return torch.stack(self._steps, dim=1).cpu().numpy()


class CausalLMClient:
    """A causal LM wrapped with one trainable LoRA adapter.

    Parameters
    ----------
    name
        Model name (registry name, folder or hub id).
    model
        The base model; it is wrapped in place with a LoRA adapter.
    tokenizer
        Its tokenizer; a missing pad token is set to EOS.
    lora
        Adapter settings.
    architecture
        Model family; picks the default LoRA target modules.
    device
        Where the model runs (``cpu``, ``cuda``, ``mps``).
    template
        Prompt template name used for training, generation and scoring.
    seed
        Seed of the initial adapter, so every client of one model starts identically
        (adapter averaging needs a common starting point).

    Attributes
    ----------
    model : peft.PeftModel
        The base model with the adapter.

    """

    def __init__(
        self,
        name: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        lora: LoraConfig,
        *,
        architecture: str,
        device: str = "cpu",
        template: str = "chat",
        seed: int = 0,
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {name!r} has no EOS token; answers could not end")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        format_prompt(tokenizer, "check", template)  # fail early on an unknown template
        self.name = name
        self.architecture = architecture
        self.device = device
        self.template = template
        self.tokenizer = tokenizer
        self.dtype = next(model.parameters()).dtype
        peft_config = make_peft_config(lora, architecture)
        # The adapter is initialised on the CPU under a fixed seed: identical on any device.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = peft.get_peft_model(model, peft_config)
        self.model.to(device)
        self.model.eval()
        log(
            INFO,
            "%s (%s): LoRA on %s",
            name,
            architecture,
            ", ".join(adapted_module_kinds(self.model)) or "no modules",
        )
        generation_eos = model.generation_config.eos_token_id
        if not isinstance(generation_eos, list):
            generation_eos = [] if generation_eos is None else [generation_eos]
        self.eos_ids = sorted({tokenizer.eos_token_id, *generation_eos})
        self._initial_adapter = self.adapter_state()

    @classmethod
    def from_peft_model(
        cls,
        name: str,
        model: peft.PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        architecture: str,
        device: str = "cpu",
        template: str = "chat",
    ) -> CausalLMClient:
        """Wrap an already adapted model, e.g. ``PeftModel.from_pretrained`` of a saved one.

        The client then generates and scores exactly as during the run that trained
        the adapter; its "fresh" adapter (``set_adapter(None)``) is the loaded one.
        """
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        format_prompt(tokenizer, "check", template)
        client = cls.__new__(cls)
        client.name, client.architecture = name, architecture
        client.device, client.template, client.tokenizer = device, template, tokenizer
        client.model = model.to(device).eval()
        client.dtype = next(model.parameters()).dtype
        generation_eos = model.generation_config.eos_token_id
        if not isinstance(generation_eos, list):
            generation_eos = [] if generation_eos is None else [generation_eos]
        client.eos_ids = sorted({tokenizer.eos_token_id, *generation_eos})
        client._initial_adapter = client.adapter_state()
        return client

    def __repr__(self) -> str:
        return (
            f"CausalLMClient(name={self.name!r}, architecture={self.architecture!r}, "
            f"device={self.device!r}, template={self.template!r})"
        )

    # -- adapter ---------------------------------------------------------------------

    def adapter_state(self) -> dict[str, np.ndarray]:
        """Return the LoRA weights only, as ordered float32 numpy copies."""
        state = peft.get_peft_model_state_dict(self.model)
        return {
            key: value.detach().to(device="cpu", dtype=torch.float32).numpy().copy()
            for key, value in state.items()
        }

    def set_adapter(self, state: dict[str, np.ndarray] | None) -> None:
        """Load LoRA weights; ``None`` resets to the fresh adapter created with the client.

        Raises
        ------
        ValueError
            If a key is missing or unexpected, or a shape differs; the message names it.

        """
        if state is None:
            state = self._initial_adapter
        expected = self._initial_adapter
        missing = [key for key in expected if key not in state]
        if missing:
            raise ValueError(
                f"adapter state of {self.name!r} misses {len(missing)} "
                f"key(s), first: {missing[0]!r}"
            )
        unexpected = [key for key in state if key not in expected]
        if unexpected:
            raise ValueError(
                f"adapter state for {self.name!r} has unexpected key(s), first: "
                f"{unexpected[0]!r} (an adapter from another model or LoRA setup?)"
            )
        for key, value in state.items():
            if tuple(np.shape(value)) != expected[key].shape:
                raise ValueError(
                    f"adapter weight {key!r} has shape {tuple(np.shape(value))}, "
                    f"expected {expected[key].shape}"
                )
        tensors = {
            key: torch.from_numpy(np.array(value, dtype=np.float32)) for key, value in state.items()
        }
        result = peft.set_peft_model_state_dict(self.model, tensors)
        if result.unexpected_keys:
            raise RuntimeError(f"peft did not place adapter weights: {result.unexpected_keys[:3]}")

    # -- helpers ---------------------------------------------------------------------

    def prompt_text(self, prompt: str) -> str:
        """Return the templated text that precedes the answer to ``prompt``."""
        return format_prompt(self.tokenizer, prompt, self.template)

    def _autocast(self) -> contextlib.AbstractContextManager:
        # Mixed precision where the weights are bf16 (CUDA); plain float32 elsewhere.
        if self.dtype == torch.bfloat16:
            return torch.autocast(device_type=torch.device(self.device).type, dtype=self.dtype)
        return contextlib.nullcontext()

    def _examples(self, pairs: Sequence[tuple[str, str]], max_len: int) -> list[dict]:
        return [build_example(self.tokenizer, self.prompt_text(p), a, max_len) for p, a in pairs]

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in batch.items()}

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        # Seed dropout without disturbing the caller's global RNG streams.
        devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    # -- train / generate / score ------------------------------------------------------

    def train(
        self,
        pairs: Sequence[tuple[str, str]],
        settings: TrainConfig,
        *,
        seed: int,
        proximal_mu: float = 0.0,
        pseudo: Sequence[tuple[str, str, bool]] = (),
        pseudo_share: float = 0.0,
        steps: int | None = None,
    ) -> dict[str, float]:
        """Fine-tune the adapter for exactly ``steps`` AdamW steps.

        Batches of ``settings.batch_size`` examples are drawn from seeded shuffled
        passes (see :func:`mixed_batches`); the loss covers the answer tokens (and
        EOS) only. With ``proximal_mu > 0`` the loss adds FedProx's
        ``mu / 2 * ||w - w0||^2`` over the adapter weights, ``w0`` being the
        adapter at the start of the call.

        Parameters
        ----------
        pairs
            Private (prompt, answer) pairs.
        settings
            Batch size, learning rate, sequence length and the default step count.
        seed
            Seeds batch sampling and dropout.
        proximal_mu
            FedProx's term weight (0: plain fine-tuning).
        pseudo
            Pseudo-labelled (prompt, answer, finished) triples; an unfinished answer
            (cut at the length cap) is trained on without EOS.
        pseudo_share
            Share of each batch drawn from ``pseudo`` (0: uniform over the union).
        steps
            Optimizer steps; ``settings.local_steps`` when None.

        Returns
        -------
        dict
            ``train-loss`` (mean over steps; 0.0 without training), ``train-steps``,
            ``train-seconds`` and ``num-examples``.

        """
        start = time.perf_counter()
        steps = settings.local_steps if steps is None else steps
        steps = steps if (pairs or pseudo) else 0
        losses: list[float] = []
        if steps > 0:
            examples = self._examples(pairs, settings.max_seq_len) + [
                build_example(
                    self.tokenizer, self.prompt_text(q), a, settings.max_seq_len, add_eos=done
                )
                for q, a, done in pseudo
            ]
            batches = mixed_batches(
                np.random.default_rng(seed),
                len(pairs),
                len(pseudo),
                settings.batch_size,
                steps,
                pseudo_share,
            )
            params = [p for p in self.model.parameters() if p.requires_grad]
            start_params = [p.detach().clone() for p in params] if proximal_mu > 0 else []
            optimizer = torch.optim.AdamW(params, lr=settings.learning_rate)
            pad_id = self.tokenizer.pad_token_id
            log_every = max(1, steps // 4)
            self.model.train()
            try:
                with self._seeded(seed):
                    for indices in batches:
                        batch = pad_batch([examples[i] for i in indices], pad_id, "right")
                        with self._autocast():
                            loss = self.model(**self._to_device(batch)).loss
                        losses.append(float(loss.detach()))  # the task loss, without the term
                        if len(losses) % log_every == 0 or len(losses) == steps:
                            # A few lines a call: progress without flooding `flwr log`.
                            log(
                                INFO,
                                "%s: step %d/%d, train loss %.4f",
                                self.name,
                                len(losses),
                                steps,
                                float(np.mean(losses[-log_every:])),
                            )
                        if start_params:
                            drift = sum(
                                (w - w0).pow(2).sum()
                                for w, w0 in zip(params, start_params, strict=True)
                            )
                            loss = loss + proximal_mu / 2 * drift
                        loss.backward()
                        # Clipping keeps single tiny-batch steps from blowing up the adapter.
                        torch.nn.utils.clip_grad_norm_(params, 1.0)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
            finally:
                self.model.eval()
        return {
            "train-loss": float(np.mean(losses)) if losses else 0.0,
            "train-steps": len(losses),
            "train-seconds": time.perf_counter() - start,
            "num-examples": len(pairs) + len(pseudo),
        }

    def generate(
        self, prompts: Sequence[str], settings: GenerationConfig
    ) -> tuple[list[str], list[float]]:
        """Greedy answers to ``prompts`` and their confidences (see :meth:`answer`)."""
        answers = self.answer(prompts, settings)
        return answers.texts, answers.confidences

    def answer(self, prompts: Sequence[str], settings: GenerationConfig) -> Answers:
        """Greedy answers to ``prompts``, their confidences and whether they finished.

        Prompts are templated, left-padded and generated ``settings.batch_size`` at a
        time. The confidence of an answer is the mean log-probability of its tokens up
        to and including EOS (an empty answer: that of its EOS): finite and ``<= 0``.
        An answer is finished when the model generated EOS before ``max_new_tokens``.

        Returns
        -------
        Answers
            Texts, confidences and finished flags, in prompt order.

        """
        config = HFGenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        all_ids = [encode_prompt(self.tokenizer, self.prompt_text(p)) for p in prompts]
        order = list(range(len(prompts)))
        if settings.sort_by_length:
            order.sort(key=lambda i: len(all_ids[i]))
        texts: list[str] = []
        confidences: list[float] = []
        finished: list[bool] = []
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(prompts), settings.batch_size):
                prompt_ids = [all_ids[i] for i in order[start : start + settings.batch_size]]
                encoded = [
                    {"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in prompt_ids
                ]
                batch = self._to_device(pad_batch(encoded, self.tokenizer.pad_token_id, "left"))
                recorder = GreedyLogProbRecorder()
                sequences = self.model.generate(
                    **batch,
                    generation_config=config,
                    logits_processor=LogitsProcessorList([recorder]),
                )
                new_tokens = sequences[:, batch["input_ids"].shape[1] :].cpu().tolist()
                logprobs = recorder.logprobs()
                for ids, row in zip(new_tokens, logprobs, strict=True):
                    n = answer_length(ids, self.eos_ids)
                    text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
                    texts.append(text.strip())
                    confidences.append(answer_confidence(ids, row, self.eos_ids))
                    finished.append(any(t in self.eos_ids for t in ids[:n]))
        back = {i: k for k, i in enumerate(order)}  # generation order -> prompt order
        ranks = [back[i] for i in range(len(prompts))]
        return Answers(
            [texts[k] for k in ranks], [confidences[k] for k in ranks], [finished[k] for k in ranks]
        )

    def nll(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 8, max_len: int = 512
    ) -> float:
        """Mean negative log-likelihood per answer token (EOS included) of reference answers.

        ``exp`` of it is the perplexity of the answers given the templated prompts.

        Raises
        ------
        ValueError
            If ``pairs`` is empty.

        """
        sums, counts = self.nll_terms(pairs, batch_size, max_len)
        return float(sums.sum() / counts.sum()) if counts.sum() else math.nan

    def nll_terms(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 8, max_len: int = 512
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed token NLL and token count of each reference answer (EOS included).

        Raises
        ------
        ValueError
            If ``pairs`` is empty.

        """
        if not pairs:
            raise ValueError("nll needs at least one (prompt, answer) pair")
        examples = self._examples(pairs, max_len)
        sums, counts = [], []
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(examples), batch_size):
                batch = self._to_device(
                    pad_batch(
                        examples[start : start + batch_size], self.tokenizer.pad_token_id, "right"
                    )
                )
                logits = self.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
                targets = batch["labels"][:, 1:]
                token_nll = F.cross_entropy(
                    logits[:, :-1].float().transpose(1, 2),
                    targets,
                    ignore_index=IGNORE_INDEX,
                    reduction="none",
                )  # (batch, seq), 0 where ignored
                sums.extend(token_nll.sum(-1).tolist())
                counts.extend((targets != IGNORE_INDEX).sum(-1).tolist())
        return np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
