"""The reference side of results/bench/compare.sh: lm-eval, transformers and llama.cpp, timed.

Run by compare.sh inside its throwaway venv; each subcommand prints one JSON object on stdout.

  lmeval  --model HF --include-path DIR --tasks A,B --limit N --batch-size B
      lm-eval's HFLM (float32, CPU) on local task YAMLs. Times the start-up (imports, model and
      task loading) apart from the scoring phase (`evaluator.evaluate`), counts the positions the
      model computes (every `_model_call` input, padding included) and returns each document's
      predicted choice (argmax of the log-likelihoods, lm-eval's `acc`).
  hf-generate --model HF --prompts FILE --batch-size B --max-new-tokens N --stop S...
      transformers `generate`, greedy, float32, batches of B left-padded prompts; generated
      tokens are counted up to and including the token where a row stopped.
  llama-generate --gguf FILE --prompts FILE --max-new-tokens N --stop S... [--threads T]
      llama.cpp (llama-cpp-python) on the GGUF as it is (its quantised weights), one prompt at a
      time, greedy (temperature 0).

Prompt files are JSON lists of strings.
"""

import argparse
import json
import sys
import time


def lmeval(args):
    t0 = time.perf_counter()
    import torch
    from lm_eval import evaluator, tasks
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(
        pretrained=args.model,
        dtype="float32",
        device="cpu",
        batch_size=args.batch_size,
    )
    manager = tasks.TaskManager(include_path=args.include_path)
    task_dict = tasks.get_task_dict(args.tasks.split(","), manager)
    loaded = time.perf_counter()

    positions = 0
    model_call = lm._model_call

    def counting_call(inps, *a, **k):
        nonlocal positions
        positions += int(inps.numel())
        return model_call(inps, *a, **k)

    lm._model_call = counting_call
    with torch.inference_mode():
        results = evaluator.evaluate(
            lm=lm,
            task_dict=task_dict,
            limit=args.limit,
            bootstrap_iters=0,
            log_samples=True,
        )
    scored = time.perf_counter()
    predictions = {}
    for task, samples in results["samples"].items():
        predictions[task] = {
            str(s["doc_id"]): max(
                range(len(s["filtered_resps"])),
                key=lambda i: s["filtered_resps"][i][0],
            )
            for s in samples
        }
    accuracy = {t: r.get("acc,none") for t, r in results["results"].items()}
    json.dump(
        {
            "startup_seconds": loaded - t0,
            "scoring_seconds": scored - loaded,
            "positions_computed": positions,
            "threads": torch.get_num_threads(),
            "accuracy": accuracy,
            "predictions": predictions,
        },
        sys.stdout,
    )


def hf_generate(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = json.load(open(args.prompts))
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()

    def run(batch):
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            stop_strings=args.stop,
            tokenizer=tok,
            pad_token_id=tok.pad_token_id,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        counts = []
        for row in new.tolist():
            n = len(row)
            # A finished row is padded to the batch's length; count up to its stop.
            while n > 0 and row[n - 1] == tok.pad_token_id:
                n -= 1
            if n < len(row) and row[n] == tok.eos_token_id:
                n += 1
            counts.append(n)
        return counts

    with torch.inference_mode():
        run(prompts[:1])  # warm-up
        start = time.perf_counter()
        counts = []
        for i in range(0, len(prompts), args.batch_size):
            counts += run(prompts[i : i + args.batch_size])
        seconds = time.perf_counter() - start
    json.dump(
        {
            "seconds": seconds,
            "tokens": sum(counts),
            "per_prompt": counts,
            "threads": torch.get_num_threads(),
        },
        sys.stdout,
    )


def llama_generate(args):
    from llama_cpp import Llama

    prompts = json.load(open(args.prompts))
    llm = Llama(
        model_path=args.gguf,
        n_ctx=2048,
        n_threads=args.threads,
        n_batch=512,
        verbose=False,
    )
    llm.create_completion(prompts[0], max_tokens=4, temperature=0.0)  # warm-up
    counts = []
    start = time.perf_counter()
    for p in prompts:
        llm.reset()
        out = llm.create_completion(
            p, max_tokens=args.max_new_tokens, temperature=0.0, stop=args.stop
        )
        counts.append(out["usage"]["completion_tokens"])
    seconds = time.perf_counter() - start
    json.dump(
        {"seconds": seconds, "tokens": sum(counts), "per_prompt": counts},
        sys.stdout,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("lmeval")
    a.add_argument("--model", required=True)
    a.add_argument("--include-path", required=True)
    a.add_argument("--tasks", required=True)
    a.add_argument("--limit", type=int, required=True)
    a.add_argument("--batch-size", type=int, required=True)
    a.set_defaults(func=lmeval)
    a = sub.add_parser("hf-generate")
    a.add_argument("--model", required=True)
    a.add_argument("--prompts", required=True)
    a.add_argument("--batch-size", type=int, required=True)
    a.add_argument("--max-new-tokens", type=int, required=True)
    a.add_argument("--stop", nargs="*", default=[])
    a.set_defaults(func=hf_generate)
    a = sub.add_parser("llama-generate")
    a.add_argument("--gguf", required=True)
    a.add_argument("--prompts", required=True)
    a.add_argument("--max-new-tokens", type=int, required=True)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--stop", nargs="*", default=[])
    a.set_defaults(func=llama_generate)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
