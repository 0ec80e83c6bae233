"""Bytes of a LoRA adapter on the wire: float32 against int8 / int4 (aggregation.quantize).

For one model's real adapter (the app's client class, ``lora.*`` defaults: rank 8 on
the attention projections), every code and scale mode:

* ``payload``: the analytic data bytes (4 per float32 value; codes plus 4 bytes per
  scale, :func:`fedsem_app.quantize.payload_bytes`);
* ``record``: the serialised ArrayRecord as the byte meter counts it
  (:func:`fedsem_app.run.meter.record_bytes`: names, shapes and framing included);
* ``round``: one ``fedavg-lora`` round of ``--clients`` clients as the meter counts
  the adapters in it: the global adapter down to each client for training, each
  trained adapter up, and the new global adapter down again for evaluation
  (3 x clients records; the small config, metric and test records come on top);
* the round-trip error of the model's fresh adapter (max abs error over tensors).

Run from the project root::

    .venv/bin/python bench/quantized_bytes.py
    .venv/bin/python bench/quantized_bytes.py --model gemma3-270m --clients 3 --out /tmp/qb
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import bench_parser, finish, human_bytes, machine, output_folder  # noqa: E402

CODES = [("none", "-"), ("int8", "row"), ("int8", "tensor"), ("int4", "row"), ("int4", "tensor")]


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; write JSON/CSV/Markdown to the output folder."""
    parser = bench_parser(__doc__, "quantized-bytes")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args(argv)

    from flwr.app import RecordDict

    from fedsem_app import protocol as p
    from fedsem_app.clients import load_client
    from fedsem_app.config.sections import LoraConfig, ModelConfig
    from fedsem_app.quantize import BITS, decode_record, encode_record, payload_bytes
    from fedsem_app.run.meter import record_bytes

    client = load_client(args.model, LoraConfig(), device="cpu", cache_dir=ModelConfig().cache_path)
    client.set_adapter(None)
    # A trained-like adapter: LoRA's B starts at zero, which int codes carry exactly;
    # give B values of A's spread so the error column means something.
    rng = np.random.default_rng(0)
    state = {
        k: (v if v.any() else rng.standard_normal(v.shape).astype(np.float32) * 0.01)
        for k, v in client.adapter_state().items()
    }
    params = sum(v.size for v in state.values())
    rows = []
    for code, scales in CODES:
        record = encode_record(state, code, scales)
        if code == "none":
            payload = 4 * params
        else:
            payload = sum(payload_bytes(v.shape, BITS[code], scales) for v in state.values())
        measured = record_bytes(RecordDict({p.ADAPTER: record}))
        decoded = decode_record(record)
        error = max(float(np.abs(decoded[k] - state[k]).max()) for k in state)
        rows.append(
            {
                "code": code,
                "scales": scales,
                "payload-bytes": payload,
                "record-bytes": measured,
                "round-bytes": 3 * args.clients * measured,
                "max-abs-error": error,
            }
        )
    base = rows[0]["record-bytes"]
    for row in rows:
        row["vs-float32"] = base / row["record-bytes"]
        row["round"] = human_bytes(row["round-bytes"])
    meta = {
        "model": args.model,
        "tensors": len(state),
        "parameters": params,
        "clients": args.clients,
        **machine(),
    }
    folder = output_folder("quantized-bytes", args.out)
    columns = [
        ("code", "code", ""),
        ("scales", "scales", ""),
        ("payload-bytes", "payload (B)", ","),
        ("record-bytes", "record, metered (B)", ","),
        ("vs-float32", "float32 / this", ".2f"),
        ("round", f"adapters / round ({args.clients} clients)", ""),
        ("max-abs-error", "max abs error", ".2e"),
    ]
    print(f"{args.model}: {len(state)} tensors, {params:,} parameters")
    finish(folder, "quantized_bytes", rows, meta, columns, markdown_file=True)
    print(f"results in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
