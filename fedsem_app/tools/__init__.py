"""Offline tools: commands and pure functions that run outside a federation.

``fedsem-analytic`` (:mod:`~fedsem_app.tools.analytic_cli`), ``fedsem-compare``
(:mod:`~fedsem_app.tools.compare`), ``fedsem-chat`` (:mod:`~fedsem_app.tools.chat`) and
``fedsem-spec`` (:mod:`~fedsem_app.tools.spec_cli`), plus what they and ``bench/``
share: run comparison tables, multi-seed studies and privacy attack scores.
"""
