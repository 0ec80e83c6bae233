"""``fedsem-chat``: answer prompts with an adapter a run saved in its ``final/`` folder.

Offline tool: loads a finished run's adapter.

::

    fedsem-chat RUN_FOLDER [--client N] [--prompt "..." | --file prompts.jsonl]

The adapter is loaded with ``PeftModel.from_pretrained`` onto its base model and
answers greedily with the prompt template it was trained with, so it gives the
answers the run's evaluation gave. Without ``--prompt`` or ``--file`` it reads one
prompt per line from the terminal until an empty line or end of input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from fedsem_app.final import FINAL_DIR, GLOBAL_NAME, META_FILE, client_folder_name


class ChatError(Exception):
    """A run folder, client or prompt file that cannot be used; the message says why."""


def adapter_folders(run_folder: Path) -> list[Path]:
    """The adapter folders of a run's ``final/``, global first, then by partition id."""
    final = Path(run_folder).expanduser() / FINAL_DIR
    folders = [m.parent for m in final.glob(f"*/{META_FILE}")]

    def order(folder: Path) -> tuple[int, int]:
        if folder.name == GLOBAL_NAME:
            return (0, 0)
        partition = json.loads((folder / META_FILE).read_text()).get("partition-id")
        return (1, int(partition) if partition is not None else 0)

    return sorted(folders, key=order)


def pick_adapter(run_folder: Path, client: int | None = None) -> Path:
    """The adapter folder to answer with: ``client-N`` if asked, else the first one.

    Raises
    ------
    ChatError
        If the run has no final adapters or not the one asked for.
    """
    folders = adapter_folders(run_folder)
    if not folders:
        raise ChatError(
            f"{run_folder} has no final adapters (no {FINAL_DIR}/*/{META_FILE}): is it a "
            "finished run folder? Runs save them after their last round."
        )
    if client is None:
        return folders[0]
    wanted = Path(run_folder).expanduser() / FINAL_DIR / client_folder_name(client)
    if wanted in folders:
        return wanted
    names = ", ".join(f.name for f in folders)
    hint = (
        " (a parameter strategy saves one global adapter: drop --client)"
        if ([f.name for f in folders] == [GLOBAL_NAME])
        else ""
    )
    raise ChatError(f"no adapter of client {client} in {run_folder}; there are: {names}{hint}")


def load_adapter(folder: Path, device: str = "cpu"):
    """Load a saved adapter onto its base model, as a client that answers like the run.

    Returns
    -------
    tuple
        The :class:`~fedsem_app.clients.CausalLMClient` and the folder's
        ``fedsem.json`` content.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from fedsem_app.clients import CausalLMClient, load_base_model

    meta = json.loads((folder / META_FILE).read_text())
    base, _, architecture = load_base_model(meta["model-name"], Path(meta["cache-dir"]), device)
    model = PeftModel.from_pretrained(base, str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    client = CausalLMClient.from_peft_model(
        meta["model-name"],
        model,
        tokenizer,
        architecture=architecture,
        device=device,
        template=meta["template"],
    )
    return client, meta


def read_prompts(path: Path, field: str = "prompt") -> list[str]:
    """Prompts of a JSONL file (one object a line, the prompt under ``field``).

    Raises
    ------
    ChatError
        Naming the line that is not JSON or has no ``field``.
    """
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ChatError(f"{path}:{number}: not JSON ({err.msg})") from err
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise ChatError(f"{path}:{number}: no string field {field!r}")
        prompts.append(row[field])
    return prompts


def answer(client, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers, generated as the run generated them."""
    from fedsem_app.config.sections import GenerationConfig

    texts, _ = client.generate(list(prompts), GenerationConfig(max_new_tokens, batch_size))
    return texts


def interactive(client, max_new_tokens: int, stdin: TextIO, stdout: TextIO) -> None:
    """Answer one prompt per line until an empty line or end of input."""
    while True:
        if stdin.isatty():
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line.strip():
            return
        stdout.write(answer(client, [line.strip()], max_new_tokens)[0] + "\n")
        stdout.flush()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``fedsem-chat``."""
    parser = argparse.ArgumentParser(
        prog="fedsem-chat", description="Answer prompts with a run's final adapter."
    )
    parser.add_argument("run_folder", type=Path, help="a finished run folder")
    parser.add_argument(
        "--client", type=int, default=None, help="partition id of the client (text strategies)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="one prompt to answer")
    source.add_argument("--file", type=Path, help="JSONL file with a 'prompt' field a line")
    parser.add_argument(
        "--max-new-tokens", type=int, default=0, help="answer length (default: the run's)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, stdin: TextIO = sys.stdin, stdout=sys.stdout) -> int:
    """Entry point of ``fedsem-chat``; returns the exit status."""
    args = parse_args(argv)
    from fedsem_app.clients import resolve_device

    try:
        folder = pick_adapter(args.run_folder, args.client)
        prompts = read_prompts(args.file) if args.file else None
        client, meta = load_adapter(folder, resolve_device(args.device))
    except (ChatError, ValueError, OSError) as err:
        print(f"fedsem-chat: {err}", file=sys.stderr)
        return 2
    tokens = args.max_new_tokens or int(meta.get("max-new-tokens", 64))
    print(
        f"fedsem-chat: {folder.name}: {meta['model-name']} ({meta['strategy']}, round "
        f"{meta['round']}), template {meta['template']}",
        file=sys.stderr,
    )
    if args.prompt is not None:
        stdout.write(answer(client, [args.prompt], tokens)[0] + "\n")
    elif prompts is not None:
        for prompt, text in zip(prompts, answer(client, prompts, tokens), strict=True):
            stdout.write(json.dumps({"prompt": prompt, "answer": text}) + "\n")
    else:
        interactive(client, tokens, stdin, stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
