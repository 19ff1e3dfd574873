"""A character-level language model on real English text that ships with every Python: nothing downloaded.

Data: the help() topics of `pydoc_data.topics` (the Python documentation's prose and code examples,
about 0.5 MB, joined in the order of their names; the exact text is the running Python's). Characters
are newline and printable ASCII, anything else one shared symbol: 97 symbols on every Python. The text
is cut into BLOCKS contiguous blocks of about 2,300 characters (the last few characters, fewer than
BLOCKS, are left out); each run of 20 blocks gives its 10th to validation and its 20th to test (5%
each: 23,240 characters on Python 3.11), the rest is training text (418,320), so the three splits
sample the whole documentation and share no text. The test text is never trained on nor used for
selection, so `test_bpc` of an exported model is an honest estimate.

Model: embedding 32, one LSTM layer of 128 units, dropout on its input and output, a linear softmax
over the symbols. Each step trains AdamW with gradient clipping at 1 on a batch of 32 windows of
BPTT+1 characters at random offsets of the training text, drawn from (order seed, step), so an
interval resumed from its checkpoint continues exactly.

Hyperparameters (all optional, defaults in DEFAULTS): `lr` (log, about 1e-4 to 1e-1: Adam's step),
`weight_decay` (log, about 1e-6 to 1e-1: AdamW's decoupled decay), `dropout` (float, 0 to 0.6).

Evaluation: each split is read as EVAL_STREAMS parallel contiguous streams from a zero hidden state.
Objective: `val_bpc` (bits per character, min); also `test_bpc`, `train_bpc` (the interval's mean
training loss in bits) and `step`.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from workers.torch_common import (SETTINGS, derive_seed, device_name, finish, interval_device, merge_hparams, resume,
                                  set_optimizer_hparams, to_device, train_steps)

if TYPE_CHECKING:
    from hopt_cli.trainable import Context

DEFAULTS: dict[str, Any] = {"lr": 3e-3, "weight_decay": 1e-4, "dropout": 0.1, **SETTINGS}
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB = len(ALPHABET) + 1  # the last symbol stands for every other character
BLOCKS = 200
EVERY = 20  # block i is validation when i % EVERY == VAL_AT, test when i % EVERY == TEST_AT
VAL_AT, TEST_AT = 9, 19
EMBED, HIDDEN = 32, 128
BATCH_SIZE = 32
BPTT = 64
CLIP = 1.0
EVAL_STREAMS = 16
BITS = 1.0 / math.log(2.0)


def encode(text: str) -> torch.Tensor:
    """The symbol index of every character of `text` (int64)."""
    index = {c: i for i, c in enumerate(ALPHABET)}
    other = len(ALPHABET)
    return torch.tensor([index.get(c, other) for c in text], dtype=torch.int64)


@functools.lru_cache(maxsize=1)
def splits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, test) symbol streams, cut from the documentation text by contiguous blocks."""
    from pydoc_data.topics import topics

    data = encode("".join(topics[name] for name in sorted(topics)))
    size = len(data) // BLOCKS
    blocks = [data[i * size:(i + 1) * size] for i in range(BLOCKS)]
    pick = {"train": [], "val": [], "test": []}
    for i, block in enumerate(blocks):
        kind = {VAL_AT: "val", TEST_AT: "test"}.get(i % EVERY, "train")
        pick[kind].append(block)
    return tuple(torch.cat(pick[kind]) for kind in ("train", "val", "test"))


class CharLSTM(nn.Module):
    """Embedding, dropout, one LSTM layer, dropout, linear logits over the symbols."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.drop = nn.Dropout()
        self.lstm = nn.LSTM(EMBED, HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, VOCAB)

    def forward(self, symbols: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.drop(self.embed(symbols)))
        return self.out(self.drop(hidden))


def windows(train: torch.Tensor, order_seed: int, step: int) -> torch.Tensor:
    """The batch of step `step`: BATCH_SIZE windows of BPTT+1 symbols at offsets drawn from (seed, step)."""
    generator = torch.Generator().manual_seed(derive_seed(order_seed, step))
    starts = torch.randint(0, len(train) - BPTT, (BATCH_SIZE,), generator=generator)
    return train[starts.unsqueeze(1) + torch.arange(BPTT + 1)]


@torch.no_grad()
def bits_per_char(model: nn.Module, stream: torch.Tensor) -> float:
    """Mean bits per character of `stream`, read as EVAL_STREAMS contiguous streams from a zero state."""
    model.eval()
    length = (len(stream) - 1) // EVAL_STREAMS
    inputs = stream[:length * EVAL_STREAMS].view(EVAL_STREAMS, length)
    targets = stream[1:length * EVAL_STREAMS + 1].view(EVAL_STREAMS, length)
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)).item() * BITS


def train_interval(ctx: Context) -> dict[str, Any]:
    """Train ctx.steps AdamW steps from ctx.parent (or from scratch), checkpoint to ctx.out, score."""
    hp = merge_hparams(DEFAULTS, ctx.hparams, "charlm")
    dev = interval_device(hp)
    train, val, test = splits()
    val, test = val.to(dev), test.to(dev)
    model, state = resume(ctx, lambda _: CharLSTM().to(dev))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(hp["lr"]))
    step, order_seed = 0, ctx.seed
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, order_seed = state["step"], state["order_seed"]
    del state  # the parent's tensors: not held through the interval
    set_optimizer_hparams(optimizer, lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))
    model.drop.p = float(hp["dropout"])
    model.train()

    def one_step() -> torch.Tensor:
        nonlocal step
        batch = to_device(windows(train, order_seed, step), dev)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        step += 1
        return loss.detach()

    _, train_loss = train_steps(ctx, one_step)
    val_bpc, test_bpc = bits_per_char(model, val), bits_per_char(model, test)
    finish(ctx, model=model.state_dict(), optimizer=optimizer.state_dict(), step=step, order_seed=order_seed)
    return {"val_bpc": val_bpc, "test_bpc": test_bpc, "train_bpc": train_loss * BITS, "step": step,
            "device": device_name(dev)}
