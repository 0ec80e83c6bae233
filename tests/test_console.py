"""What a run prints: progress bars off while loading, only the listed warnings ignored.

The real `flwr run` in test_flwr_run.py checks the console of a whole run.
"""

import subprocess
import sys
import warnings

from transformers.utils import logging as hf_logging

from fedsem_app.console import ignore_harmless_warnings, quiet_loading

PEFT_ALIAS = (
    "`is_gradient_checkpointing` is deprecated and will be removed in v6. "
    "Use `is_activation_checkpointing` instead."
)
RAY_TIP = (
    "Tip: In future versions of Ray, Ray will no longer override accelerator visible "
    "devices env var if num_gpus=0 or num_gpus=None (default)."
)


def warn_from(module: str, category: type[Warning], message: str) -> None:
    """Issue a warning as if ``module`` had raised it."""
    warnings.warn_explicit(message, category, f"{module}.py", 1, module=module)


def test_quiet_loading_hides_bars_and_the_listed_warning_only_inside() -> None:
    # Prepare
    bars_before = hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        # Execute
        with quiet_loading():
            bars_inside = hf_logging.is_progress_bar_enabled()
            warn_from("transformers.modeling_utils", FutureWarning, PEFT_ALIAS)
            warn_from("transformers.modeling_utils", FutureWarning, "another change")
            warn_from("transformers.modeling_utils", UserWarning, PEFT_ALIAS)
        warn_from("transformers.modeling_utils", FutureWarning, PEFT_ALIAS)
    # Assert: inside, only the listed (category, message, module) is ignored;
    # afterwards it shows again and the bars are as they were.
    assert not bars_inside
    assert hf_logging.is_progress_bar_enabled() == bars_before
    assert [(w.category, str(w.message)) for w in seen] == [
        (FutureWarning, "another change"),
        (UserWarning, PEFT_ALIAS),
        (FutureWarning, PEFT_ALIAS),
    ]


def test_ray_tip_is_ignored_from_ray_only() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        # Execute
        ignore_harmless_warnings()
        ignore_harmless_warnings()  # twice: still one filter each
        warn_from("ray._private.worker", FutureWarning, RAY_TIP)
        warn_from("ray._private.worker", FutureWarning, "Tip: something else")
        warn_from("fedsem_app.server_app", FutureWarning, RAY_TIP)
        filters = [f for f in warnings.filters if f[0] == "ignore" and f[2] is FutureWarning]
    # Assert
    assert [(w.filename, str(w.message)) for w in seen] == [
        ("ray._private.worker.py", "Tip: something else"),
        ("fedsem_app.server_app.py", RAY_TIP),
    ]
    assert len([f for f in filters if "Ray" in f[1].pattern]) == 1


def test_rouge_scoring_leaves_the_root_logger_alone() -> None:
    # Prepare: a fresh interpreter, whose root logger has no handler (as a ClientApp's).
    code = (
        "import logging\n"
        "from fedsem_app.clients.evaluation import rouge_l\n"
        "scores = rouge_l(['the cat sat'], ['the cat sat down'])\n"
        "print(round(scores[0], 4), len(logging.root.handlers))\n"
    )
    # Execute
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    # Assert: ROUGE-L F of 3 of 4 words in order = 2 * (1 * 0.75) / 1.75; and no root
    # handler, which would print every Flower log line a second time.
    assert out.stdout.split() == [str(round(2 * 0.75 / 1.75, 4)), "0"], out.stderr[-2000:]
