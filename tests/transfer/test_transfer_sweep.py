"""``fused-mup transfer`` end to end on tiny real runs: resume, divergence, CLI."""

from __future__ import annotations

import json

import pytest

from fused_mup.transfer import (
    SweepSpec,
    cli,
    data,
    load_corpus,
    load_results,
    main,
    run_key_id,
    run_sweep,
    sweep,
)


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


def test_diverged_run_is_recorded(tmp_path):
    spec = tiny_spec(presets=("sp",), widths=(16,), lrs=(30.0,))
    (rec,) = run_sweep(spec, tmp_path, jobs=1, progress=False)
    assert rec["diverged"] is True
    assert json.loads((tmp_path / "results.jsonl").read_text())["diverged"] is True


def test_end_to_end_cli(tmp_path):
    argv = [
        "--widths", "16,32,64", "--lr-range=-9,-5", "--presets", "sp,mup", "--seeds", "0,1",
        "--depth", "1", "--heads", "2", "--context", "16", "--batch", "4", "--base-width", "16",
        "--tokens", "1024", "--max-bytes", "300000", "--device", "cpu", "--jobs", "1",
        "--bootstrap", "20", "--no-progress", "--out", str(tmp_path),
    ]  # fmt: skip
    assert main(argv) == 0
    assert len(load_results(tmp_path)) == 2 * 3 * 5 * 2
    report = (tmp_path / "report.md").read_text()
    assert "## sp" in report and "## mup" in report and "95% CI" in report
    assert "Wall time of the sweep" in report
    assert (tmp_path / "transfer.png").stat().st_size > 0
    assert (tmp_path / "eta_star.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["presets"]) == {"sp", "mup"}
    assert main(["--report-only", "--out", str(tmp_path), "--no-plots"]) == 0


def test_cli_parsing():
    a = cli.build_parser().parse_args(
        ["--quick", "--lrs", "2**-10,1e-3", "--tokens-per-param", "2", "--weight-decay", "0.1"]
    )
    spec = cli.spec_from_args(a)
    assert spec.lrs == (2.0**-10, 1e-3) and spec.name == "quick"
    assert spec.tokens is None and spec.steps_for(64) > spec.steps_for(32)
    assert spec.weight_decay == 0.1
    with pytest.raises(SystemExit):
        cli.spec_from_args(cli.build_parser().parse_args(["--presets", "nope"]))


@pytest.mark.slow
def test_process_pool(tmp_path):
    recs = run_sweep(tiny_spec(), tmp_path, jobs=2, progress=False)
    assert len(recs) == 8 and all(r["val_loss"] or r["diverged"] for r in recs)
