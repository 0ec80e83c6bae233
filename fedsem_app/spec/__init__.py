"""A federation described client by client in one YAML file.

The run-config key ``federation-spec`` names the file. It lists the clients in
order (client *i* is partition *i*), each with a name, its model, optional LoRA
settings, its data (a partition of the shared dataset, or its own file with a
field mapping), device and fault mode; ``defaults`` apply to every client that
does not name a key itself. The spec wins over the run config for what it names
per client; everything global stays in the run config::

    defaults:
      model: smollm2-135m
    clients:
      - name: alice
        lora: {rank: 4, target-modules: [q_proj, v_proj]}
      - name: bob
        data: {path: bob.jsonl, prompt-field: question, answer-field: response}
      - name: carol
        model: gemma3-270m

The file is read with ``yaml.safe_load`` only (a ``!!python/...`` tag is
refused) into frozen dataclasses, and checked before any training: an unknown
key (with the closest valid one), an unknown model, a missing data file,
duplicate client names, a wrong type or value stop with one line naming the
client and the key (:class:`SpecError`).

Each client becomes a SuperNode's node config (:meth:`ClientSpec.node_config`):
in simulation the ClientApp merges its spec entry under its own node config, in
deployment ``fedsem-spec deploy`` writes the same keys into each SuperNode's
``--node-config``. One translation serves both.
"""
