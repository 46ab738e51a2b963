"""``fused-mup transfer`` on tiny real runs: corpus, one run's record, resume, divergence."""

from __future__ import annotations

import json
import sys

import pytest

from fused_mup.transfer import (
    SweepSpec,
    data,
    load_corpus,
    load_results,
    run_key_id,
    run_sweep,
    sweep,
)
from fused_mup.transfer.train import RunConfig, instability, lr_factor, train_run


def tiny_spec(**kw) -> SweepSpec:
    base = dict(
        presets=("sp", "mup"),
        widths=(16, 32),
        lrs=(2.0**-7, 2.0**-5),
        depth=1,
        heads=2,
        context=16,
        batch=4,
        base_width=16,
        tokens=4 * 16 * 4,
        eval_batches=2,
        max_bytes=300_000,
        device="cpu",
        name="tiny",
    )
    base.update(kw)
    return SweepSpec(**base)


def test_corpus_is_deterministic_and_split():
    a = load_corpus(max_bytes=300_000)
    assert len(a.train) > 5 * len(a.val) > 0
    data._CACHE.clear()
    assert load_corpus(max_bytes=300_000).fingerprint == a.fingerprint


def test_resume_after_interruption(tmp_path, monkeypatch):
    spec = tiny_spec()
    n_all = len(spec.runs())
    calls = []
    real = sweep.train_run

    def interrupted(cfg, threads=None):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(cfg)
        return real(cfg, threads=threads)

    monkeypatch.setattr(sweep, "train_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path, jobs=1, progress=False)
    assert len(load_results(tmp_path)) == 3
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"id": "torn line from a kill')  # a crash mid-write
    calls.clear()
    monkeypatch.setattr(
        sweep, "train_run", lambda cfg, threads=None: (calls.append(cfg), real(cfg))[1]
    )
    recs = run_sweep(spec, tmp_path, jobs=1, progress=False)
    assert len(calls) == n_all - 3
    assert len(recs) == n_all
    ids = [r["id"] for r in load_results(tmp_path)]
    assert sorted(ids) == sorted({run_key_id(c.key()) for c in spec.runs()})
    calls.clear()
    run_sweep(spec, tmp_path, jobs=1, progress=False)  # nothing left to do
    assert calls == []


def test_progress_bar_and_resume_message(tmp_path, capsys):
    spec = tiny_spec(presets=("sp",), widths=(16,), lrs=(2.0**-6,))
    run_sweep(spec, tmp_path, jobs=1, progress=True)
    err = capsys.readouterr().err
    assert "transfer" in err and "1/1 runs, last sp d=16" in err  # tqdm with the run's label
    run_sweep(spec, tmp_path, jobs=1, progress=True)
    assert "resuming: 1 runs already in the results file" in capsys.readouterr().err


def test_progress_lines_without_tqdm(tmp_path, capsys, monkeypatch):
    # the shared bar (fused_mup.bench.progress) falls back to one line per run with an ETA
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    spec = tiny_spec(presets=("sp",), widths=(16,), lrs=(2.0**-6, 2.0**-5))
    run_sweep(spec, tmp_path, jobs=1, progress=True)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("transfer: [")]
    assert len(lines) == 2 and "ETA" in lines[0] and lines[1].endswith("lr=0.0312")


def test_diverged_run_is_recorded(tmp_path):
    spec = tiny_spec(presets=("sp",), widths=(16,), lrs=(30.0,))
    (rec,) = run_sweep(spec, tmp_path, jobs=1, progress=False)
    assert rec["diverged"] is True
    assert json.loads((tmp_path / "results.jsonl").read_text())["diverged"] is True


@pytest.mark.slow
def test_process_pool(tmp_path):
    recs = run_sweep(tiny_spec(), tmp_path, jobs=2, progress=False)
    assert len(recs) == 8 and all(r["val_loss"] or r["diverged"] for r in recs)


def test_run_record_has_curve_instability_and_compute():
    cfg = RunConfig("sp", 16, 2.0**-6, 0, depth=1, heads=2, context=16, batch=4, steps=30,
                    base_width=16, eval_batches=2, max_bytes=300_000)  # fmt: skip
    cfg = RunConfig(**{**cfg.__dict__, "data": load_corpus(max_bytes=300_000).fingerprint})
    rec = train_run(cfg, threads=None)
    assert not rec["diverged"] and rec["steps_done"] == 30
    assert len(rec["curve"]) == 30 and rec["curve"][-1][0] == 30  # <= 50 points: every step
    # FLOPs = (6 N + 6 depth context d) per token (docs/transfer.md), N non-embedding
    n = 12 * 16 * 16 + 4 * 16 + 2 * 16 + 256 * 16
    assert rec["params"] == n
    assert rec["flops"] == (6 * n + 6 * 1 * 16 * 16) * 30 * 4 * 16
    assert 0 < rec["train_seconds"] <= rec["seconds"]
    assert rec["instability"] >= 0
    assert rec["val_loss_per_byte"] == rec["val_loss"]  # bytes: one byte per token


def test_instability_measure():
    smooth = [3.0 - 0.01 * t for t in range(100)]
    assert instability(smooth) == 0.0
    spiky = list(smooth)
    spiky[50] += 1.0  # one spike of height ~1 over the running median
    # the spike minus the running median (the 5th-smallest of the 10 previous: L_45)
    assert instability(spiky) == pytest.approx((1.0 - 0.05) / 90, rel=1e-6)
    assert instability([1.0, 2.0]) == 0.0  # shorter than the window


def test_lr_schedules():
    assert lr_factor(0, 100, 0.1) == pytest.approx(0.1)  # warm-up
    assert lr_factor(9, 100, 0.1) == 1.0
    assert lr_factor(99, 100, 0.1, "cosine") == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(55, 100, 0.1, "linear") == pytest.approx(0.55)
    assert lr_factor(80, 100, 0.1, "constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(50, 100, 0.1, "step")
