"""Wire protocol: every record key and message field, defined once.

Shared: the server writes and reads these keys, and so does every client.

A train message carries a ConfigRecord under :data:`TRAIN_CONFIG` and, depending
on the strategy, the round's public prompts (:data:`PUBLIC`), last round's
pseudo-labels (:data:`PSEUDO`) and/or a global adapter (:data:`ADAPTER`). The
client does what the message holds: load the adapter if one is sent, train on
private data plus pseudo-labelled pairs, answer the public prompts if any are
sent, and return its adapter if :data:`RETURN_ADAPTER` is set.
"""

# --- record names in a RecordDict ----------------------------------------------
TRAIN_CONFIG = "config"  # ConfigRecord: round and switches
PUBLIC = "public"  # ConfigRecord: IDS (list[int]) and TEXTS (list[str]) to answer
PSEUDO = "pseudo"  # ConfigRecord: IDS, PROMPTS, TEXTS, FINISHED of the consensus labels
TEST = "test"  # ConfigRecord: IDS, PROMPTS, TEXTS (reference answers) to evaluate on
ADAPTER = "adapter"  # ArrayRecord: LoRA adapter weights (parameter strategies)
ANSWERS = "answers"  # ConfigRecord reply: IDS, TEXTS, CONFIDENCES, FINISHED
METRICS = "metrics"  # MetricRecord reply: numbers (see METRIC_* below)
INFO = "info"  # ConfigRecord reply: MODEL_NAME and other strings

# --- fields inside those records -----------------------------------------------
ROUND = "server-round"
RETURN_ADAPTER = "return-adapter"
PROXIMAL_MU = "proximal-mu"  # FedProx's term weight (Flower's FedProx uses this key too)
QUANTIZE = "quantize"  # "none", "int8", "int4": how the client sends its adapter back
QUANTIZE_SCALES = "quantize-scales"  # "tensor" or "row" (see fedsem_app.quantize)
TRAIN_ON_ALL_PARTITIONS = "train-on-all-partitions"
TEMPLATE = "template"  # prompt template the client must use (overrides model.template)
LOCAL_STEPS = "local-steps"  # optimizer steps this round (overrides train.local-steps)
IDS = "ids"
PROMPTS = "prompts"
TEXTS = "texts"
CONFIDENCES = "confidences"
FINISHED = "finished"  # list[bool]: the answer ended with EOS, not at the length cap
MODEL_NAME = "model-name"
CLIENT_NAME = "client-name"  # INFO field: the client's name in a federation spec ("" without)
NODE_ERROR = "error"

# --- metric names (MetricRecord keys) ------------------------------------------
NUM_EXAMPLES = "num-examples"  # FedAvg's weighting key
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
GENERATE_SECONDS = "generate-seconds"
ROUGE_L = "rouge-l"
EMBED_SIM = "embed-sim"
NLL = "nll"
PERPLEXITY = "perplexity"
EVAL_SECONDS = "eval-seconds"
# Per-prompt evaluation scores (lists, prompt order), for intervals over prompts.
PER_PROMPT = {ROUGE_L: "rouge-l-per-prompt", EMBED_SIM: "embed-sim-per-prompt"}
NLL_SUMS = "nll-sum-per-prompt"  # summed token NLL of each reference answer
NLL_TOKENS = "nll-tokens-per-prompt"  # its token count (NLL is a ratio of the two sums)
CPU_SECONDS = "cpu-seconds"  # process CPU time of the handler (fedsem_app.clients.energy)
GPU_JOULES = "gpu-joules"  # NVML energy of the handler; sent only where measured

# --- message types --------------------------------------------------------------
TRAIN = "train"
EVALUATE = "evaluate"

# --- run bookkeeping the server adds to every train/evaluate config (fedsem_app.final)
RUN_FOLDER = "run-folder"  # the server's absolute run folder: names the run across resumes
NUM_ROUNDS = "num-server-rounds"  # the run's total, so a client knows its last round
CLIENT_EXPORT = "export-client-adapters"  # true: clients save their own final adapter
FINAL_ADAPTER = "final-adapter"  # INFO field of a reply: where the client saved it
