"""lm-eval's side of results/bench/score.sh: one loglikelihood task, timed, as one JSON line.

    python score_lmeval.py HF_DIR TASK_DIR TASKS LIMIT BATCH

HF_DIR: the float32 Hugging Face folder; TASK_DIR: lm-eval task YAMLs on the local data; TASKS:
comma-separated task names. Prints {"load_s", "scoring_s", "positions", "answers"}: model load
time, the time of `simple_evaluate` (requests built and scored), the token positions torch ran
(padding included, counted at the model call) and each document's chosen answer (argmax of the
choices' log-likelihoods) keyed "task/doc_id".
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

t0 = time.perf_counter()
import lm_eval  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

hf_dir, task_dir, tasks, limit, batch = sys.argv[1:6]
lm = HFLM(pretrained=hf_dir, dtype="float32", device="cpu", batch_size=int(batch))
positions = 0
model_call = lm._model_call


def counting_call(inps, *args, **kwargs):
    global positions
    positions += inps.numel()
    return model_call(inps, *args, **kwargs)


lm._model_call = counting_call
load_s = time.perf_counter() - t0

t1 = time.perf_counter()
results = lm_eval.simple_evaluate(
    model=lm,
    tasks=tasks.split(","),
    task_manager=TaskManager(include_path=task_dir),
    limit=int(limit),
    log_samples=True,
)
scoring_s = time.perf_counter() - t1

answers = {}
for task, samples in results["samples"].items():
    for s in samples:
        lls = [r[0] for r in s["filtered_resps"]]
        answers[f"{task}/{s['doc_id']}"] = max(range(len(lls)), key=lls.__getitem__)
print(
    json.dumps(
        {"load_s": load_s, "scoring_s": scoring_s, "positions": positions, "answers": answers}
    )
)
