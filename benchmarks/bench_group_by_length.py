"""What grouping batches by length saves: padding and step time, measured interleaved.

A training batch is right-padded to its longest sequence. The default run's ProsQA
prompts vary with the graph's size (42 to 105 tokens), so a shuffled batch carries a lot
of padding that the model computes on and then masks out. `group_by_length` (train.py)
sorts windows of batches by length before cutting them. This script builds one epoch's
order both ways for the same data, reports the padding share of each, and times
training steps on batches from the two orders alternately (A, B, A, B…: machine noise
hits both alike) with the default run's model, one torch thread.

    python benchmarks/bench_group_by_length.py [--steps 40] [--strategy cot] [--train 4000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from token_assorted.data.schema import save_examples
from token_assorted.data.tasks import get_task
from token_assorted.lm.config import TrainConfig
from token_assorted.lm.setup import setup
from token_assorted.pipeline.preset import load_preset
from token_assorted.training.order import epoch_order, group_by_length, text_lengths


def padding_share(order: list[int], lengths: list[int], batch_size: int) -> tuple[float, float]:
    """(share of padded tokens, mean batch width) of an epoch cut into batches in `order`."""
    widths = [max(lengths[i] for i in order[b:b + batch_size]) for b in range(0, len(order), batch_size)]
    real = sum(lengths[i] for i in order)
    return 1 - real / (batch_size * sum(widths)), statistics.mean(widths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="the data options, model and batch size come from it")
    parser.add_argument("--strategy", default="cot")
    parser.add_argument("--train", type=int, default=4000, help="generated training examples")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per order")
    args = parser.parse_args()
    torch.set_num_threads(1)
    preset = load_preset(args.preset)
    batch_size = int(preset.train.get("batch_size", 32))
    task = get_task(preset.task)
    examples = task.generate(args.train, seed=0, **preset.data.options)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        save_examples(data, examples)
        run = setup(TrainConfig(task=preset.task, data=str(data), out=str(Path(tmp) / "out"),
                                strategy=args.strategy, model=preset.train.get("model", "scratch-tiny")))
    lengths = text_lengths(run.encoded)
    n = len(lengths) // batch_size * batch_size
    orders = {"shuffled": epoch_order(len(lengths), n, seed=0, epoch=0)}
    orders["grouped"] = group_by_length(orders["shuffled"], lengths, batch_size, seed=0, epoch=0)
    optimizer = torch.optim.AdamW(run.model.parameters(), lr=1e-4)
    times: dict[str, list[float]] = {name: [] for name in orders}
    for step in range(args.steps + 3):
        for name, order in orders.items():
            indices = order[step * batch_size:(step + 1) * batch_size]
            start = time.perf_counter()
            loss = run.model(**run.method.batch(run, indices, seed=0, epoch=0)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 3:  # warm-up steps are dropped
                times[name].append(time.perf_counter() - start)
    print(f"{preset.task} ({args.preset} preset data), {args.strategy}, {len(lengths)} examples, batch {batch_size}, "
          f"sequence length {statistics.mean(lengths):.1f} mean / {max(lengths)} max")
    for name, order in orders.items():
        share, width = padding_share(order, lengths, batch_size)
        print(f"{name:9s} padding {100 * share:5.1f} %  mean batch width {width:6.1f}  "
              f"step {1000 * statistics.median(times[name]):7.1f} ms (median of {args.steps})")
    # The first `steps` batches of each order are a sample; the epoch's cost follows the widths.
    epoch = {name: padding_share(order, lengths, batch_size)[1] for name, order in orders.items()}
    print(f"padded tokens per epoch, grouped / shuffled: {epoch['grouped'] / epoch['shuffled']:.3f}")


if __name__ == "__main__":
    main()
