"""Penn Tree Bank word-level language model: an LSTM with the AWD-LSTM regularizers (Merity et al. 2017).

Data: ptb.train.txt, ptb.valid.txt and ptb.test.txt from the folder named by the env var PTB_DIR.
Every line is its words plus `<eos>`; the vocabulary is the train file's words in order of first
appearance, so it is the same in every process. Objective: `val_ppl` (min).

Model (HOPT_PTB_SIZE): `full` (default) is the AWD-LSTM of the paper: 3 LSTM layers, embedding 400,
hidden 1150, tied embedding and softmax weights, batch 20; `small` is 2 layers, embedding 64,
hidden 128, for tests and CPU benchmarks. HOPT_PTB_BATCH overrides the batch size of a fresh start.
Training is plain SGD with gradient clipping at 0.25 and the AWD activation regularizers (AR alpha=2,
TAR beta=1); the sequence length is drawn around `bptt` each step and the step's learning rate scaled
by it, as AWD does. Hidden state and position in the training stream carry across intervals.

Hyperparameters (all optional, defaults in DEFAULTS): `lr` (log, about 1 to 100, AWD uses 30),
`weight_decay` (log, about 1e-7 to 1e-4), `bptt` (int, about 35 to 100), and the dropouts (float,
0 to 0.8): `dropoute` (drops whole words from the embedding matrix), `dropouti` (variational
dropout on the embeddings), `dropouth` (variational dropout between LSTM layers), `dropout`
(variational dropout on the last layer's output) and `wdrop` (DropConnect on the hidden-to-hidden
weights, applied with torch.func.functional_call so nn.LSTM, and cuDNN on GPU, still run the layer;
since weight_hh is a new tensor every training step, cuDNN copies the layer's weights into one
contiguous buffer every step, a copy of a few MB beside the step's matrix products; evaluation uses
the packed weights as they are). Settings: `device` and `deterministic`, as every torch trainable's
(workers.torch_common.SETTINGS).

Precision: fp32 without autocast; on CUDA the matrix products and cuDNN's LSTM may use TF32 tensor
cores (compute capability 8.0 on), as workers.torch_common.select_kernels sets every interval.

Validation: the first HOPT_PTB_VAL_TOKENS tokens of ptb.valid.txt (default 0 = all 73,760 of
them), evaluated with batch 10 and sequence length 70 as in AWD, from a zero hidden state. At full
size that is about 105 forward passes, cheap next to an interval of a few hundred training steps;
the cap bounds the cost when intervals are short or the model large. Test perplexity of a finished
checkpoint: evaluate_test().
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from workers.torch_common import (SETTINGS, device, device_name, finish, interval_device, load_checkpoint,
                                  merge_hparams, resume, set_optimizer_hparams, train_steps)

if TYPE_CHECKING:
    from hopt_cli.trainable import Context

DATA_ENV = "PTB_DIR"
SIZE_ENV = "HOPT_PTB_SIZE"
BATCH_ENV = "HOPT_PTB_BATCH"
VAL_TOKENS_ENV = "HOPT_PTB_VAL_TOKENS"
FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
EOS, UNK = "<eos>", "<unk>"
SIZES = {"full": {"layers": 3, "emb": 400, "hidden": 1150}, "small": {"layers": 2, "emb": 64, "hidden": 128}}
BATCH_SIZE = 20
EVAL_BATCH = 10
EVAL_BPTT = 70
CLIP = 0.25
AR_ALPHA, TAR_BETA = 2.0, 1.0
MAX_SEQ_DELTA = 40
MIN_SEQ = 5
DEFAULTS: dict[str, Any] = {"lr": 30.0, "weight_decay": 1.2e-6, "bptt": 70, "dropout": 0.4, "dropouth": 0.25,
                            "dropouti": 0.4, "dropoute": 0.1, "wdrop": 0.5, **SETTINGS}


@dataclass(frozen=True)
class Corpus:
    """The three splits as 1-D int64 token streams, and the vocabulary size."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: int


def data_dir() -> Path:
    """$PTB_DIR, checked to hold the three PTB files (a clear error names what is wrong)."""
    raw = os.environ.get(DATA_ENV)
    expected = ", ".join(FILES)
    if not raw:
        raise ValueError(f"PTB: set {DATA_ENV} to the folder holding {expected}")
    folder = Path(raw).expanduser()
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"PTB: {DATA_ENV}={folder} lacks {', '.join(missing)} (expected {expected})")
    return folder


def _words(path: Path) -> list[str]:
    """The file's words, each line followed by <eos> (the standard PTB tokenisation)."""
    with open(path, encoding="utf-8") as f:
        return [word for line in f for word in line.split() + [EOS]]


def _encode(words: list[str], ids: dict[str, int], path: Path) -> torch.Tensor:
    """Words to ids; a word missing from the train vocabulary becomes <unk>, or is an error."""
    unknown = ids.get(UNK)
    try:
        encoded = [ids[w] if unknown is None else ids.get(w, unknown) for w in words]
    except KeyError as e:
        problem = f"word {e.args[0]!r} is not in the training vocabulary and there is no {UNK}"
        raise ValueError(f"{path}: {problem}") from None
    return torch.tensor(encoded, dtype=torch.int64)


@functools.lru_cache(maxsize=1)
def _corpus(folder: Path) -> Corpus:
    """Read and encode the three splits once per process."""
    train = _words(folder / FILES[0])
    ids: dict[str, int] = {}
    for word in train:
        ids.setdefault(word, len(ids))
    valid, test = (_encode(_words(folder / name), ids, folder / name) for name in FILES[1:])
    return Corpus(_encode(train, ids, folder / FILES[0]), valid, test, len(ids))


def batchify(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """A token stream as `batch` parallel columns (time x batch), dropping the ragged end."""
    rows = len(tokens) // batch
    return tokens[: rows * batch].view(batch, rows).t().contiguous()


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout: one mask per sequence, shared across time steps (x is time x batch x dim)."""
    if not training or p == 0:
        return x
    return x * x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)


def embedded_dropout(embed: nn.Embedding, words: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Embedding lookup with whole rows (words) of the embedding matrix dropped."""
    weight = embed.weight
    if training and p > 0:
        weight = weight * weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
    return F.embedding(words, weight)


class AWDLSTM(nn.Module):
    """Stacked LSTM language model with tied weights and the AWD dropouts (set as attributes)."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, emb)
        sizes = [emb] + [hidden] * (layers - 1) + [emb]
        self.rnns = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1]) for i in range(layers))
        self.decoder = nn.Linear(emb, vocab)
        self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        self.dropout = self.dropouth = self.dropouti = self.dropoute = self.wdrop = 0.0

    def init_hidden(self, batch: int) -> list[torch.Tensor]:
        """Zero (h, c) per layer, flattened as [h0, c0, h1, c1, ...]."""
        weight = self.encoder.weight
        return [weight.new_zeros(1, batch, rnn.hidden_size) for rnn in self.rnns for _ in range(2)]

    def _layer(self, rnn: nn.LSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One LSTM layer, with DropConnect on its hidden-to-hidden weights while training."""
        if self.training and self.wdrop > 0:
            dropped = F.dropout(rnn.weight_hh_l0, p=self.wdrop, training=True)
            return functional_call(rnn, {"weight_hh_l0": dropped}, (x, state))
        return rnn(x, state)

    def forward(self, words: torch.Tensor, hidden: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(logits, new hidden, last layer output before and after its dropout) for time x batch words."""
        x = locked_dropout(embedded_dropout(self.encoder, words, self.dropoute, self.training),
                           self.dropouti, self.training)
        new_hidden: list[torch.Tensor] = []
        raw = x
        for i, rnn in enumerate(self.rnns):
            raw, (h, c) = self._layer(rnn, x, (hidden[2 * i], hidden[2 * i + 1]))
            new_hidden += [h, c]
            last = i == len(self.rnns) - 1
            x = locked_dropout(raw, self.dropout if last else self.dropouth, self.training)
        return self.decoder(x), new_hidden, raw, x


@torch.no_grad()
def _evaluate(model: AWDLSTM, data: torch.Tensor) -> float:
    """Mean cross-entropy per token over time x batch `data`, in chunks of EVAL_BPTT."""
    model.eval()
    hidden = model.init_hidden(data.size(1))
    total = torch.zeros((), device=data.device)
    for i in range(0, data.size(0) - 1, EVAL_BPTT):
        n = min(EVAL_BPTT, data.size(0) - 1 - i)
        logits, hidden, _, _ = model(data[i:i + n], hidden)
        total += F.cross_entropy(logits.flatten(0, 1), data[i + 1:i + 1 + n].flatten(), reduction="sum")
    return total.item() / ((data.size(0) - 1) * data.size(1))


def _val_tokens(corpus: Corpus) -> torch.Tensor:
    """The validation prefix scored every interval (HOPT_PTB_VAL_TOKENS; 0 or unset = all)."""
    limit = int(os.environ.get(VAL_TOKENS_ENV, 0))
    return corpus.valid[:limit] if limit > 0 else corpus.valid


def _build(state: dict[str, Any] | None, vocab: int, dev: torch.device) -> AWDLSTM:
    """The model of a checkpoint's configuration, or of HOPT_PTB_SIZE for a fresh start."""
    config = state["config"] if state else _fresh_config()
    return AWDLSTM(vocab, config["emb"], config["hidden"], config["layers"]).to(dev)


def _fresh_config() -> dict[str, int]:
    """Model size and batch size of a new run, from HOPT_PTB_SIZE and HOPT_PTB_BATCH."""
    size = os.environ.get(SIZE_ENV, "full")
    if size not in SIZES:
        raise ValueError(f"{SIZE_ENV}={size!r}: expected one of {sorted(SIZES)}")
    return {**SIZES[size], "batch": int(os.environ.get(BATCH_ENV, BATCH_SIZE))}


def _seq_len(bptt: int) -> int:
    """AWD's random sequence length: around bptt (half of it 5% of the time), at least MIN_SEQ."""
    mean = bptt if torch.rand(()).item() < 0.95 else bptt / 2
    return min(max(MIN_SEQ, int(torch.normal(float(mean), 5.0, ()).item())), bptt + MAX_SEQ_DELTA)


def train_interval(ctx: Context) -> dict[str, Any]:
    """One PBT interval of the AWD-LSTM on PTB: resume, ctx.steps SGD steps, validate, save."""
    hp = merge_hparams(DEFAULTS, ctx.hparams, "PTB")
    corpus = _corpus(data_dir())
    dev = interval_device(hp)
    model, state = resume(ctx, lambda s: _build(s, corpus.vocab, dev))
    config = state["config"] if state else _fresh_config()
    train = batchify(corpus.train, config["batch"]).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(hp["lr"]))
    step, pos, hidden = 0, 0, model.init_hidden(config["batch"])
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, pos, hidden = state["step"], state["pos"], state["hidden"]
    del state  # the parent's tensors: not held through the interval
    set_optimizer_hparams(optimizer, weight_decay=float(hp["weight_decay"]))
    for name in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop"):
        setattr(model, name, float(hp[name]))
    bptt, lr = int(hp["bptt"]), float(hp["lr"])
    model.train()

    def one_step() -> torch.Tensor:
        nonlocal step, pos, hidden
        n = min(_seq_len(bptt), train.size(0) - 1 - pos)
        for group in optimizer.param_groups:
            group["lr"] = lr * n / bptt
        logits, hidden, raw, dropped = model(train[pos:pos + n], [h.detach() for h in hidden])
        loss = F.cross_entropy(logits.flatten(0, 1), train[pos + 1:pos + 1 + n].flatten())
        regularized = loss + AR_ALPHA * dropped.pow(2).mean() + TAR_BETA * (raw[1:] - raw[:-1]).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        regularized.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        step, pos = step + 1, pos + n
        if pos >= train.size(0) - 2:
            pos, hidden = 0, model.init_hidden(config["batch"])
        return loss.detach()

    _, train_loss = train_steps(ctx, one_step)
    val_loss = _evaluate(model, batchify(_val_tokens(corpus), EVAL_BATCH).to(dev))
    finish(ctx, model=model.state_dict(), optimizer=optimizer.state_dict(), step=step, pos=pos,
           hidden=[h.detach() for h in hidden], config=config)
    return {"val_ppl": _exp(val_loss), "val_loss": val_loss, "train_loss": train_loss, "step": step,
            "device": device_name(dev)}


def _exp(loss: float) -> float:
    """Perplexity of a mean cross-entropy (inf, not an OverflowError, for a diverged model)."""
    return float(torch.tensor(loss, dtype=torch.float64).exp())


def evaluate_test(checkpoint: Path) -> dict[str, float]:
    """Perplexity and loss of a checkpoint (e.g. the one `hopt best` exports) on the whole test set."""
    corpus = _corpus(data_dir())
    dev = device()
    state = load_checkpoint(checkpoint)
    model = _build(state, corpus.vocab, dev)
    model.load_state_dict(state["model"])
    test_loss = _evaluate(model, batchify(corpus.test, EVAL_BATCH).to(dev))
    return {"test_ppl": _exp(test_loss), "test_loss": test_loss}
