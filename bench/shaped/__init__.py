"""The parts of ``bench/shaped_network.py``: round time on shaped links.

``net``         network namespaces joined by veth pairs, shaped with ``tc tbf``; link check
``deployment``  the ``deploy/`` scripts, each run in the namespace of what it starts
``analysis``    per-round rows of a run folder, transfer estimate, model check, crossover
``report``      the Markdown tables from a results folder
"""
