"""Generation speed: tokens/s of recurrent decoding (``ssmkit.generation.generate``) against re-running the
convolution-mode forward over the whole prefix for every new token, at several context lengths, and the
memory of the recurrent state against attention's KV cache.

    OMP_NUM_THREADS=1 python scripts/bench_generate.py [--contexts 1024,4096,16384] [--batches 1,16]
        [--models s4d,sashimi,attn] [--steps 400] [--compile aot] [--temperature 1] [--json out.json]

Per (model, batch, context):
- ``decode``: ``generate(prompt of `context` tokens, steps new tokens)``; tokens/s = batch x steps / stepping
  time (sampling included, prefill and compilation excluded; they are reported separately). S4D and SaShiMi
  step with ``compile`` (default ``aot``, AOTInductor); attention steps eagerly against its KV cache.
- ``recompute``: the cost of one new token by prefix re-computation = one forward over `context` tokens
  (the prediction at the last position). Measured on ``--recompute-samples`` forwards (default 1, after a
  short warm-up) and extrapolated: tokens/s = batch / forward time. For attention at batch > 1 and context
  > 4096 the forward is timed at batch 1 and multiplied by the batch (attention's cost is linear in it).
- ``speedup`` = decode tokens/s / recompute tokens/s at that context.
- ``state``: bytes of everything carried between tokens per sequence (SSM states; the KV cache at that
  context for attention).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from ssmkit import SequenceModel
from ssmkit.generation import generate

VOCAB = 256


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "s4d":  # the model: 6 layers of S4D, d_model 128, N 64
        return SequenceModel(VOCAB, VOCAB, d_model=128, n_layers=6, mixer=dict(name="s4d", d_state=64),
                             pool=None, encoder="embedding").eval()
    if name == "attn":  # the same stack with causal attention (4 heads) and an MLP, as a transformer
        return SequenceModel(VOCAB, VOCAB, d_model=128, n_layers=6, mixer=dict(name="attn", n_heads=4),
                             pool=None, encoder="embedding", mlp_ratio=2).eval()
    if name == "sashimi":  # SaShiMi: pool factors 4, 4, expand 2, 2 S4D blocks per level (d_model 64 outside)
        from ssmkit.models.sashimi import SaShiMi

        return SaShiMi(VOCAB, VOCAB, d_model=64, n_layers=2, mixer=dict(name="s4d", d_state=64),
                       pool_factors=(4, 4), expand=2, encoder="embedding").eval()
    raise SystemExit(f"unknown model {name!r}; choose s4d, sashimi or attn")


def state_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(map(state_bytes, state.values()))
    if isinstance(state, (list, tuple)):
        return sum(map(state_bytes, state))
    return 0


@torch.no_grad()
def forward_seconds(model, batch: int, context: int, samples: int) -> float:
    x = torch.randint(0, VOCAB, (batch, context))
    model(x[:, :256])  # warm-up: allocations, backend choice
    best = float("inf")
    for _ in range(samples):
        t0 = time.perf_counter()
        model(x)
        best = min(best, time.perf_counter() - t0)
    return best


def attention_cache(model, batch: int, context: int) -> list:
    """Every attention mixer's KV cache after ``context`` tokens, with random keys and values (the step's cost does
    not depend on their values)."""
    from ssmkit.mixers.attention import KVCache

    state = []
    for mixer in model.mixers:
        k = torch.randn(batch, mixer.n_heads, context, mixer.d_head)
        state.append(KVCache(k, torch.randn_like(k), context))
    return state


@torch.no_grad()
def attention_decode(model, batch: int, context: int, steps: int) -> float:
    """Tokens/s of the eager step against a KV cache of ``context`` keys; used where prefilling is too slow here."""
    state = attention_cache(model, batch, context)
    x = torch.randint(0, VOCAB, (batch,))
    model.step(x, state)
    t0 = time.perf_counter()
    for _ in range(steps):
        scores, state = model.step(x, state)
        x = scores.argmax(-1)
    return batch * steps / (time.perf_counter() - t0)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="1024,4096,16384")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--models", default="s4d,sashimi,attn")
    parser.add_argument("--steps", type=int, default=400, help="new tokens timed per point")
    parser.add_argument("--recompute-samples", type=int, default=1)
    parser.add_argument("--compile", default="aot", help="step of s4d/sashimi: aot, inductor, none")
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy (no sampling cost)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, threads "
          f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')})")
    print("| model | batch | context | decode tok/s | step | compile s | prefill s | recompute tok/s | speedup | state per sequence |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    rows = []
    for name in args.models.split(","):
        model = build(name)
        for batch in batches:
            for context in contexts:
                row = {"model": name, "batch": batch, "context": context}
                if name == "attn" and batch * context > 4096:
                    row["decode_tok_s"] = attention_decode(model, batch, context, args.steps)
                    row.update(step="eager (synthetic cache)", compile_s=0.0, prefill_s=None)
                else:
                    prompt = torch.randint(0, VOCAB, (batch, context))
                    compile = "none" if name == "attn" else args.compile
                    g = generate(model, prompt, args.steps + 1, temperature=args.temperature, seed=0, compile=compile)
                    row.update(decode_tok_s=g.tokens_per_s, step=g.step, compile_s=g.compile_s, prefill_s=g.prefill_s)
                if name == "attn":
                    state = attention_cache(model, 1, context)
                else:  # a recurrent state has the same size whatever the context
                    state = model(torch.zeros(1, 16, dtype=torch.long), return_state=True)[1]
                row["state_bytes"] = state_bytes(state)
                if name == "attn" and batch > 1 and context > 4096:
                    row["recompute_tok_s"] = 1.0 / forward_seconds(model, 1, context, args.recompute_samples)
                    row["recompute_note"] = "batch-1 forward x batch"
                else:
                    row["recompute_tok_s"] = batch / forward_seconds(model, batch, context, args.recompute_samples)
                row["speedup"] = row["decode_tok_s"] / row["recompute_tok_s"]
                rows.append(row)
                prefill = "-" if row["prefill_s"] is None else f"{row['prefill_s']:.2f}"
                print(f"| {name} | {batch} | {context} | {row['decode_tok_s']:,.0f} | {row['step']} | "
                      f"{row['compile_s']:.1f} | {prefill} | {row['recompute_tok_s']:,.2f} | "
                      f"{row['speedup']:,.0f}x | {row['state_bytes'] / 1024:,.0f} KiB |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
