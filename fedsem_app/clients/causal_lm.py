"""A causal language model with one LoRA adapter: train, generate, score, swap adapters.

Runs on the client (the server loads one only to build or export a global adapter).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from logging import INFO

import numpy as np
import peft
import torch
import torch.nn.functional as F
from flwr.common.logger import log
from transformers import GenerationConfig as HFGenerationConfig
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedsem_app.clients.batching import (
    IGNORE_INDEX,
    build_example,
    encode_prompt,
    mixed_batches,
    pad_batch,
)
from fedsem_app.clients.generation import (
    Answers,
    GreedyLogProbRecorder,
    answer_confidence,
    answer_length,
)
from fedsem_app.clients.lora import adapted_module_kinds, make_peft_config, merged_adapter
from fedsem_app.clients.templates import format_prompt
from fedsem_app.config.sections import GenerationConfig, LoraConfig, TrainConfig
from fedsem_app.console import quiet_loading


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
        with torch.random.fork_rng(devices=[]), quiet_loading():
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
        With ``settings.merge_adapter`` the adapter is folded into the weights for the
        call (:func:`~fedsem_app.clients.lora.merged_adapter`) and restored after it.

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
        merged = merged_adapter(self.model) if settings.merge_adapter else contextlib.nullcontext()
        with torch.inference_mode(), self._autocast(), merged:
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
        return self._label_nll(self._examples(pairs, max_len), batch_size)

    def text_logprob(
        self, texts: Sequence[str], batch_size: int = 8, max_len: int = 512
    ) -> np.ndarray:
        """Mean log-probability per token of each text on its own (no template).

        Every token after the first is scored (a BOS is put in front where the
        tokenizer has one, so the first word is scored too); a text with no token
        to score gets NaN.

        Returns
        -------
        np.ndarray
            ``(len(texts),)`` float64, ``<= 0`` or NaN.

        """
        if not texts:
            return np.zeros(0)
        examples = []
        bos = self.tokenizer.bos_token_id
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: max_len - 1]
            ids = ([bos] if bos is not None else []) + ids
            labels = list(ids)
            if not ids:  # nothing to score; one token keeps the batch well-formed
                ids, labels = [self.tokenizer.eos_token_id], [IGNORE_INDEX]
            examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        sums, counts = self._label_nll(examples, batch_size)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, -sums / np.maximum(counts, 1), np.nan)

    def prompt_lift(
        self, prompts: Sequence[str], batch_size: int = 8, max_len: int = 512
    ) -> np.ndarray:
        """How much the adapter raised each prompt's likelihood: with minus without it.

        ``text_logprob`` under base + adapter minus under the base alone (peft's
        ``disable_adapter``): two forward passes per prompt, no generation.

        Returns
        -------
        np.ndarray
            ``(len(prompts),)`` float64 nats per token; NaN for an empty prompt.

        """
        adapted = self.text_logprob(prompts, batch_size, max_len)
        with self.model.disable_adapter():
            base = self.text_logprob(prompts, batch_size, max_len)
        return adapted - base

    def _label_nll(
        self, examples: Sequence[dict[str, list[int]]], batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        # Summed next-token NLL of the labelled positions and their count, per example.
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
