"""Typed configuration, read once at the boundary (shared by every side).

``context.run_config`` is a flat mapping with dotted keys (``train.local-steps``).
:func:`~fedsem_app.config.app.load_app_config` turns it into frozen dataclasses
(:mod:`~fedsem_app.config.sections`) that validate themselves; nothing else in the
app reads ``run_config[...]``. Node-level settings (a SuperNode's ``--node-config``)
are read by :func:`~fedsem_app.config.node.load_node_config` and win over the run
config for the model, data file and device of that node. A wrong value raises
:class:`~fedsem_app.config.errors.ConfigError`, naming the key and what to do.
"""
