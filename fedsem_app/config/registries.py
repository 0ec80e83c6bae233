"""Where each closed set of names that the config checks lives (shared by every side).

Every set of names (templates, partitioners, consensus rules, ...) is declared once,
in the registry beside its implementations, and those modules read the typed config.
So the config does not import them: it reaches each registry through a
:class:`~fedsem_app.registry.RegistryRef`, whose module is imported on the first
check (after the config itself has loaded). Config stays on the ground floor and no
import circle runs through it; a wrong name still fails with the registry's own
message and list of allowed values.
"""

from __future__ import annotations

from fedsem_app.registry import RegistryRef

TEMPLATES = RegistryRef("fedsem_app.clients.templates:TEMPLATES")
PARTITIONERS = RegistryRef("fedsem_app.data.partition:PARTITIONERS")
CONSENSUS_RULES = RegistryRef("fedsem_app.strategies.consensus:CONSENSUS_RULES")
AGGREGATION_RULES = RegistryRef("fedsem_app.strategies.aggregation:AGGREGATION_RULES")
DP_WRAPPERS = RegistryRef("fedsem_app.strategies.dp:DP_WRAPPERS")
FAULT_MODES = RegistryRef("fedsem_app.clients.faults:FAULT_MODES")
RELEVANCE_ESTIMATORS = RegistryRef("fedsem_app.clients.relevance:RELEVANCE_ESTIMATORS")
