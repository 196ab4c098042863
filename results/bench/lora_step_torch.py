"""PyTorch + PEFT side of `results/bench/train.sh`: the same LoRA training step as `trainer bench`
(SmolLM2-135M, float32, CPU, random token batch, loss on every token after the first, AdamW
betas 0.9/0.95, LoRA r 16 alpha 16 on gate/up/down_proj, dropout 0), timed per step.

Usage: python lora_step_torch.py HF_DIR [--batch-size 4] [--seq-len 512] [--steps 5]
Prints one JSON line like `trainer bench`.
"""
import argparse
import json
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--batch-size", type=int, default=4)
p.add_argument("--seq-len", type=int, default=512)
p.add_argument("--steps", type=int, default=5)
a = p.parse_args()

torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
model = get_peft_model(
    model,
    LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=["gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM"),
)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
ids = torch.randint(0, model.config.vocab_size, (a.batch_size, a.seq_len))
tokens = a.batch_size * a.seq_len
times = []
for step in range(a.steps + 1):
    t0 = time.perf_counter()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    s = time.perf_counter() - t0
    print(f"step {step}{' (warm-up)' if step == 0 else ''}: {s:.2f} s, {tokens / s:.0f} tokens/s, loss {out.loss.item():.4f}", flush=True)
    if step > 0:
        times.append(s)
times.sort()
print(json.dumps({
    "tool": f"torch {torch.__version__} + peft, {torch.get_num_threads()} threads",
    "batch_size": a.batch_size,
    "seq_len": a.seq_len,
    "steps": a.steps,
    "best_step_s": times[0],
    "median_step_s": times[len(times) // 2],
    "tokens_per_s_best": tokens / times[0],
    "tokens_per_s_median": tokens / times[len(times) // 2],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
