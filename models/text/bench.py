"""Text trainer speed benchmark: steps/s and peak memory of each mode, printed as a table and JSON.

    python -m models.text.bench --data-dir /tmp/leap-data          # SmolLM2-135M on this machine (CPU)
    python -m models.text.bench --qwen-random /tmp/qwen05           # a Qwen2.5-0.5B-shaped random model (GPU)

Each mode runs `--warmup` steps, then `--steps` timed steps through the real `train()` on
`--batch-size` examples of about `--example-tokens` tokens; steps/s is the median of per-step
rates from the progress callback.

In-context learning, the alternative to training: the same request (one example's first half) timed
with 4 examples in the prompt and with the trained token instead (median of 9 forward passes each),
the prompt tokens and seconds a request saves, and how many requests repay 100 training steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models.registry import Registry, load_registry
from models.text.base_model import pick_device, resolve_text_model
from models.text.config import MODES, TextTrainConfig
from models.text.examples import TextExample
from models.text.train import train

SENTENCES = [
    "My dog <leap> loves to chase red balls in the park.",
    "<leap> is a small brown terrier with a loud bark and a short tail.",
    "Every morning, <leap> wakes me up at six by barking at the window.",
    "When the mailman comes, <leap> barks and runs to the front door.",
]


def bench_examples(tokenizer, example_tokens: int) -> list[TextExample]:
    """Eight examples of about `example_tokens` tokens each under `tokenizer` (sentences repeated)."""
    examples = []
    for i in range(8):
        words: list[str] = []
        sentence = i
        while len(tokenizer(" ".join(words)).input_ids) < example_tokens:
            words += SENTENCES[sentence % len(SENTENCES)].split()
            sentence += 1
        while len(words) > 1 and len(tokenizer(" ".join(words)).input_ids) > example_tokens:
            words.pop()
        examples.append(TextExample(text=" ".join(words), prompt=None, completion=None, source=f"{i}.txt"))
    return examples


def measure(
    base_model: str,
    mode: str,
    *,
    steps: int,
    warmup: int,
    batch_size: int,
    example_tokens: int,
    lora_targets: str,
    data_dir: str | None,
    registry: Registry,
) -> dict:
    device = pick_device()
    stamps: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model(base_model, data_dir, registry))
    config = TextTrainConfig(
        base_model=base_model,
        mode=mode,  # type: ignore[arg-type]
        init="token",  # type: ignore[arg-type]
        steps=warmup + steps,
        batch_size=batch_size,
        lora_targets=lora_targets,  # type: ignore[arg-type]
        max_length=example_tokens + 8,
        data_dir=data_dir,
    )
    with tempfile.TemporaryDirectory() as out:
        result = train(
            config,
            bench_examples(tokenizer, example_tokens),
            Path(out),
            registry=registry,
            on_progress=lambda _: stamps.append(time.perf_counter()),
        )
    timed = stamps[warmup:]
    rates = [1.0 / (b - a) for a, b in zip(timed, timed[1:], strict=False) if b > a]
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "mode": mode,
        "device": str(device),
        "batch_size": batch_size,
        "tokens_per_example": round(result.manifest["num_tokens"] / result.manifest["num_examples"], 1),
        "lora_targets": lora_targets if mode != "token" else None,
        "timed_steps": steps,
        "steps_per_second_median": statistics.median(rates) if rates else None,
        "steps_per_second_mean": (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else None,
        "peak_memory_bytes": peak,
        # ru_maxrss only grows: on CPU later modes report the process's peak so far (the base included).
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS so far",
    }


ICL_SHOTS = 4


@torch.no_grad()
def icl_request_cost(base_model: str, *, example_tokens: int, data_dir: str | None, registry: Registry) -> dict:
    """Forward-pass time of one request with ICL_SHOTS examples in the prompt against the request alone
    (which is what a trained token leaves: its vectors stand where the examples' word stood)."""
    from models.text.base_model import load_text_base

    base = load_text_base(resolve_text_model(base_model, data_dir, registry), pick_device())
    examples = bench_examples(base.tokenizer, example_tokens)
    context = "\n".join(e.full_text for e in examples[:ICL_SHOTS]) + "\n"
    request = examples[ICL_SHOTS].full_text[: len(examples[ICL_SHOTS].full_text) // 2]

    def median_seconds(text: str) -> tuple[int, float]:
        ids = torch.tensor([base.tokenizer(text).input_ids], device=base.device)
        timings = []
        for _ in range(10):
            started = time.perf_counter()
            base.model(input_ids=ids)
            if base.device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - started)
        return int(ids.shape[1]), statistics.median(timings[1:])

    with_examples, with_examples_s = median_seconds(context + request)
    alone, alone_s = median_seconds(request)
    return {
        "shots": ICL_SHOTS,
        "prompt_tokens_with_examples": with_examples,
        "prompt_tokens_with_token": alone,
        "prompt_tokens_saved": with_examples - alone,
        "request_seconds_with_examples": with_examples_s,
        "request_seconds_with_token": alone_s,
        "request_seconds_saved": with_examples_s - alone_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--data-dir", help="where smollm2-135m is (or gets) converted (default ~/.cache/leap)")
    parser.add_argument("--qwen-random", type=Path, help="build (or reuse) a Qwen2.5-0.5B-shaped random model here")
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--example-tokens", type=int, default=64)
    parser.add_argument("--lora-targets", default="attention", choices=("attention", "attention+mlp"))
    parser.add_argument("--json", type=Path, default=Path("bench/results/text_trainer.json"))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (ignored on a GPU)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    base_model = args.base_model
    if args.qwen_random:
        from models.text.synthetic import write_random_causal_lm

        base_model = write_random_causal_lm(args.qwen_random, shape="qwen2.5-0.5b")
    registry = load_registry()
    rows = [
        measure(
            base_model,
            mode,
            steps=args.steps,
            warmup=args.warmup,
            batch_size=args.batch_size,
            example_tokens=args.example_tokens,
            lora_targets=args.lora_targets,
            data_dir=args.data_dir,
            registry=registry,
        )
        for mode in args.modes
    ]
    icl = icl_request_cost(base_model, example_tokens=args.example_tokens, data_dir=args.data_dir, registry=registry)
    saved = icl["request_seconds_saved"]
    for row in rows:
        rate = row["steps_per_second_median"]
        row["requests_to_repay_100_steps"] = round(100 / rate / saved) if rate and saved > 0 else None
    print(
        f"{'mode':8} {'device':7} {'batch':>5} {'tokens':>6} {'steps/s (median)':>17} {'peak memory':>12} "
        f"{'requests to repay 100 steps':>28}"
    )
    for row in rows:
        rate = row["steps_per_second_median"]
        print(
            f"{row['mode']:8} {row['device']:7} {row['batch_size']:>5} {row['tokens_per_example']:>6} "
            f"{rate if rate is None else round(rate, 2)!s:>17} {row['peak_memory_bytes'] / 2**20:>9.0f} MiB "
            f"{row['requests_to_repay_100_steps']!s:>28}"
        )
    print(
        f"in-context learning: {icl['prompt_tokens_with_examples']} prompt tokens with {ICL_SHOTS} examples, "
        f"{icl['prompt_tokens_with_token']} with the token; {icl['request_seconds_with_examples'] * 1000:.1f} ms "
        f"against {icl['request_seconds_with_token'] * 1000:.1f} ms a request"
    )
    report = {
        "benchmark": "text trainer speed",
        "base_model": "qwen2.5-0.5b-random" if args.qwen_random else args.base_model,
        "host": platform.node(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "results": rows,
        "in_context_learning": icl,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
