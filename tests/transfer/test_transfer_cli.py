"""``fused-mup transfer`` as a user runs it: usage errors, list syntax, the CPU-hours guard,
one tiny end-to-end sweep and its report, the weight-decay and vocabulary experiments."""

from __future__ import annotations

import json
import math

import pytest

from fused_mup.transfer import cli, experiments, load_results, main, run_key_id
from fused_mup.transfer.claims import VERDICTS
from fused_mup.transfer.experiments import run_vocab, run_weight_decay, vocab_spec
from fused_mup.transfer.experiments import weight_decay_spec as wd_spec
from fused_mup.transfer.report import completeness, make_report
from fused_mup.transfer.spec import SweepSpec, pow2

TINY = ["--depth", "1", "--heads", "2", "--context", "16", "--batch", "4", "--base-width", "16",
        "--max-bytes", "300000", "--device", "cpu", "--no-progress"]  # fmt: skip


def parse(*argv: str):
    p = cli.build_parser()
    return cli.spec_from_args(p.parse_args(cli.protect_negative_values(argv, cli.LIST_OPTIONS)), p)


def test_list_syntax_and_negative_lr_range():
    a = parse("--quick", "--lr-range", "-12,-4", "--widths", "32,64", "128", "--seeds", "0 1")
    assert a.lrs == tuple(2.0**e for e in range(-12, -3))
    assert a.widths == (32, 64, 128) and a.seeds == (0, 1)
    assert parse("--lr-range", "-12", "-4").lrs == a.lrs
    assert parse("--lr-range=-12,-4").lrs == a.lrs
    b = parse("--lrs", "2**-10,1e-3", "--betas", "0.9,0.95", "--schedule", "linear")
    assert b.lrs == (2.0**-10, 1e-3) and (b.beta1, b.beta2) == (0.9, 0.95)
    assert b.schedule == "linear" and b.name == "full"
    c = parse("--quick", "--tokens-per-param", "2", "--head-dim", "8", "--warmup", "0.05")
    assert c.tokens is None and c.steps_for(64) > c.steps_for(32)
    assert c.head_dim == 8 and c.warmup == 0.05
    assert len(parse("--quick").seeds) >= 3  # --quick carries intervals
    std = parse("--standard")
    assert len(std.seeds) >= 3 and max(std.widths) >= 256 and std.tokens >= 400_000
    assert {"sp", "mup_lr", "sp_emb"} <= set(std.presets) and std.name == "standard"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--presets", "sp,mupp"], "unknown presets ['mupp']"),
        (["--widths", "30,64"], "widths [30] are not multiples of --heads 16"),
        (["--widths", "0"], "must be >= 1"),
        (["--lr-range", "-4,-12"], "LO <= HI"),
        (["--lr-range", "-4"], "LO <= HI"),
        (["--lrs", "0,1e-3"], "learning rates must be > 0"),
        (["--betas", "0.9"], "--betas takes B1,B2"),
        (["--tokenizer", "bpe-100"], "with N > 256, got 'bpe-100'"),
        (["--tokenizers", "bytes,words"], "'bytes' or 'bpe-<N>'"),
        (["--warmup", "2"], "--warmup is a fraction"),
        (["--lrs", "fast"], "not a number"),
    ],
    ids=lambda x: x if isinstance(x, str) else "-".join(x)[:24],
)
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_long_cpu_run_needs_yes(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "estimate_seconds", lambda *a, **k: 5 * 3600.0)
    ran = []
    monkeypatch.setattr(cli, "run_sweep", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(
        cli, "make_report", lambda out, *a, **k: (out / "report.md").write_text("r")
    )
    argv = ["--device", "cpu", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 2 and not ran
    assert "estimated at 5.0 hours" in capsys.readouterr().err
    assert main([*argv, "--yes"]) == 0 and len(ran) == 1


def test_default_full_sweep_on_cpu_is_guarded(tmp_path, capsys):
    # the real estimate of the default sweep on a CPU: hours, so it stops before training
    assert main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "--yes" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


def test_end_to_end_cli_and_report(tmp_path):
    argv = ["--widths", "16,32", "--lr-range=-8,-6", "--presets", "sp,mup_lr,sp_emb",
            "--seeds", "0,1", "--tokens", "512", "--jobs", "1", "--bootstrap", "20",
            "--out", str(tmp_path), *TINY]  # fmt: skip
    assert main(argv) == 0
    recs = load_results(tmp_path)
    assert len(recs) == 3 * 2 * 3 * 2
    assert all(len(r["curve"]) == 8 and r["flops"] > 0 for r in recs)
    report = (tmp_path / "report.md").read_text()
    # the verdicts and the gap closed come first
    assert report.index("## Verdicts") < report.index("## Share of SP's loss gap closed")
    assert report.index("## Share of SP") < report.index("## Setup") < report.index("## sp")
    for section in ("## Best loss L*(d)", "## Stability at the best LR", "## Compute"):
        assert section in report
    # 2 seeds: ranges labelled as ranges, and no interval anywhere
    assert "(range over seeds): no interval below 3 seeds" in report
    assert "interval: none (2 seeds < 3)" in report and "t-interval [" not in report
    assert "## Per-seed values at d=32 (seeds 0, 1)" in report
    for fig in ("transfer.png", "eta_star.png", "curves.png"):
        assert (tmp_path / fig).read_bytes()[:4] == b"\x89PNG"
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {v["rule"] for v in m["verdicts"]} == {"H", "S"}
    # fewer than 3 seeds: rule V never decides
    assert all(v["verdict"] == VERDICTS[2] and v["n_seeds"] == 2 for v in m["verdicts"])
    g = m["presets"]["sp_emb"]["gap_closed"]
    assert set(g) == {"16", "32"} and g["16"]["mean"] is None  # base width: no gap
    assert len(g["32"]["per_seed"]) == 2 and g["32"]["interval"] is None
    assert m["statistics"]["n_seeds"] == 2 and m["metrics_intervals"] is None
    for key in ("gap_closed_vs_mup", "L_star", "log2_eta_star", "instability", "loss_left"):
        assert len(m["presets"]["sp"][key]["per_seed"] if key == "loss_left" else
                   m["presets"]["sp"][key]["32"]["per_seed"]) == 2  # fmt: skip
    for key in ("compute",):
        assert key in m["presets"]["sp"]
    assert m["presets"]["sp"]["compute"]["flops_ratio"] > 1
    assert set(m["gap"]) == {"gap", "gap_vs_mup"}
    assert main(["--report-only", "--out", str(tmp_path), "--no-plots", "--bootstrap", "0"]) == 0


def _fake_sweep(loss):
    """run_sweep stand-in: records from a loss formula, no training (the comparison logic)."""

    def run(spec, out, jobs=None, progress=True):
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.json").write_text(json.dumps(spec.to_json()))
        recs = []
        for c in spec.runs():
            rid = run_key_id(c.key())
            recs.append({"id": rid, "key": c.key(), "val_loss": loss(c), "diverged": False})
        with open(out / "results.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        return recs

    return run


def test_weight_decay_experiment(tmp_path, monkeypatch):
    # planted: WD on puts η* exactly on the power law (E = 0) and sharpens the basin with width
    def loss(c):
        x, d = math.log2(c.lr), c.width / 16
        if c.weight_decay:
            return 2.0 + 0.01 * d * (x + 5 + 0.5 * math.log2(d)) ** 2 + 0.001 * c.seed
        wiggle = {16: 0.0, 32: 0.4, 64: -0.3}[c.width]
        return 2.0 + 0.01 * (x + 5 + 0.5 * math.log2(d) + wiggle) ** 2 + 0.001 * c.seed

    monkeypatch.setattr(experiments, "run_sweep", _fake_sweep(loss))
    spec = wd_spec(quick=True, presets=("sp",), seeds=(0, 1, 2), max_bytes=300_000)
    assert spec.tokens_per_param == 1.0 and spec.tokens is None and spec.weight_decay == 0.0
    r = run_weight_decay(spec, tmp_path, 0.1, progress=False, n_boot=30, plots=False)
    (row,) = r["rows"]
    assert row["E_on"]["per_seed"] == pytest.approx([0.0] * 3, abs=1e-6)
    assert min(row["E_off"]["per_seed"]) > 0.1
    assert row["dkappa"]["per_seed"] == pytest.approx([1.0] * 3, abs=0.05)
    assert row["dkappa"]["interval"] is not None and row["dkappa"]["n"] == 3
    assert r["verdict"]["verdict"] == "supported"
    md = (tmp_path / "weight_decay.md").read_text()
    assert "**supported**" in md and "| sp |" in md
    assert (tmp_path / "on" / "report.md").exists() and (tmp_path / "off" / "report.md").exists()


def test_vocab_experiment(tmp_path, monkeypatch):
    # planted: sqrt(m) wins once vocab / width >= 16
    def loss(c):
        vocab = 256 if c.tokenizer == "bytes" else int(c.tokenizer.split("-")[1])
        bonus = 0.05 if (c.preset == "sp_emb_sqrt") == (vocab / c.width >= 16) else 0.0
        return 3.0 - bonus + 0.01 * (math.log2(c.lr) + 7) ** 2

    monkeypatch.setattr(experiments, "run_sweep", _fake_sweep(loss))
    spec = vocab_spec(quick=True, widths=(32, 64), base_width=16, max_bytes=300_000)
    r = run_vocab(spec, tmp_path, ("bytes", "bpe-512"), progress=False, plots=False)
    ratios = sorted(row["vocab_per_width"] for row in r["rows"])
    assert ratios == [4.0, 8.0, 8.0, 16.0]
    assert r["sqrt_overtakes_at_vocab_per_width"] == 16.0
    assert all(row["bytes_per_token"] >= 1 for row in r["rows"])
    assert "√m overtakes m at vocab/width ≥ 16" in (tmp_path / "vocab.md").read_text()


def test_partial_report_uses_whole_seeds_and_says_what_is_missing(tmp_path):
    spec = SweepSpec.quick(
        presets=("sp", "mup_lr", "sp_emb"), widths=(16, 32), lrs=pow2(-8, -6), max_bytes=300_000
    )
    recs = _fake_sweep(lambda c: 2.0 + 0.01 * (math.log2(c.lr) + 7) ** 2 + 0.001 * c.seed)(
        spec, tmp_path
    )
    # sp_emb seed 2 lost its last run (an interrupted sweep)
    last = next(r for r in reversed(recs) if r["key"]["preset"] == "sp_emb")
    kept = [r for r in recs if r is not last]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    used, info = completeness(kept, spec)
    assert info["finished"] == 53 and info["total"] == 54
    assert info["complete"] == {"sp": [0, 1, 2], "mup_lr": [0, 1, 2], "sp_emb": [0, 1]}
    assert info["unfinished"] == [("sp_emb", 2, "5/6 runs")]
    assert len(used) == 48
    assert completeness(recs, spec) == (recs, None)
    m = make_report(tmp_path, n_boot=0, plots=False)
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2].startswith("**Partial result: 53 of 54 runs finished.**")
    assert "sp_emb seed 2 (5/6 runs)" in report
    assert m["partial"]["total"] == 54
    # sp_emb has 2 whole seeds: its shares show a range, the other presets' 3 seeds intervals
    assert m["presets"]["sp_emb"]["L_star"]["32"]["n"] == 2
    assert m["presets"]["sp"]["L_star"]["32"]["interval"] is not None
    # nothing whole yet: the report says how far the sweep got, and has no numbers
    first = [r for r in recs if r["key"]["seed"] == 0][:2]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first))
    m = make_report(tmp_path, n_boot=0, plots=False)
    assert m["partial"]["finished"] == 2 and "presets" not in m
    assert "No (preset, seed) sweep is complete yet" in (tmp_path / "report.md").read_text()
