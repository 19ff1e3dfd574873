"""Smoke test of benchmarks/throughput.py on the CPU: every trainable gets a step loop and its fixed costs."""
from __future__ import annotations

import argparse

import pytest

from benchmarks import throughput

TINY = {"cifar_width": 4, "cifar_images": 600, "ptb_size": "small", "ptb_vocab": 200,
        "ptb_tokens": (4_000, 600, 600)}


@pytest.mark.slow  # three trainables, each three intervals: 25 to 35 s on two busy cores
def test_a_tiny_cpu_run_times_the_steps_and_each_fixed_cost(monkeypatch):
    monkeypatch.setenv("HOPT_DEVICE", "cpu")
    for name in ("CIFAR_DIR", "HOPT_CIFAR_WIDTH", "HOPT_CIFAR_BATCH", "PTB_DIR", "HOPT_PTB_SIZE"):
        monkeypatch.setenv(name, "")  # run() sets them; monkeypatch puts back what was there
    monkeypatch.setitem(throughput.SIZES, "tiny", TINY)

    results = throughput.run("tiny", steps=2, warmup=1, repeat=1)

    assert [r.name.split()[0] for r in results] == ["digits", "CIFAR-10", "PTB"]
    for r in results:
        p = r.phases
        assert p.loop > 0 and p.read > 0 and p.write > 0 and p.start > 0 and p.evaluation > 0, r
        assert p.total > p.loop + r.fixed() - 1e-9 and p.checkpoint_mb > 0 and not p.autotune
        assert r.peak_allocated_mib is None and r.throughput().endswith("/s")
    args = argparse.Namespace(device="cpu", size="tiny", steps=2, warmup=1, repeat=1)
    page = throughput.report(results, args, "python benchmarks/throughput.py", "0.0, 0.0, 0.0")
    assert "| PTB AWD-LSTM small | 20 x ~70 | 2 |" in page and "CIFAR's batches come through a DataLoader" in page


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--warmup", "0"]])
def test_no_steps_or_no_warm_up_is_refused(monkeypatch, argv):
    monkeypatch.setattr("sys.argv", ["throughput.py", *argv])
    with pytest.raises(SystemExit) as caught:
        throughput.main()
    assert caught.value.code == 2
