"""Coordinate check: logits flat in width under mup, growing under sp (CPU, a few seconds)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fused_mup.coord_check import (
    coord_check,
    main,
    random_batches,
    recorded_layer,
    tiny_gpt_factories,
    write_outputs,
)

# Small and fast on CPU; zero-init readout under mup, so logits show only the learned part.
FAST = {"lr": 5e-2, "heads": 2, "context": 16, "optimizer": "torch"}
WIDTHS = (16, 32, 64, 128)
STEPS = 6


@pytest.fixture(scope="module")
def results():
    batches = random_batches(STEPS, batch=4, context=16)
    return {
        p: coord_check(
            tiny_gpt_factories(p, WIDTHS, **FAST), batches, layers=recorded_layer, name=p
        )
        for p in ("sp", "mup")
    }


def test_logit_slope_flat_under_mup_positive_under_sp(results) -> None:
    mup_slope = results["mup"].slope("readout")
    sp_slope = results["sp"].slope("readout")
    assert abs(mup_slope) < 0.3, mup_slope
    assert sp_slope > 0.45, sp_slope
    assert sp_slope - mup_slope > 0.4


def test_attention_logits_grow_under_sp(results) -> None:
    for layer in ("blocks.0.attn.logits", "blocks.1.attn.logits"):
        assert results["sp"].slope(layer) > 0.8
        assert results["sp"].slope(layer) > results["mup"].slope(layer) + 0.8


def test_records_every_layer_and_step(results) -> None:
    r = results["mup"]
    assert r.layers == [
        "tok_emb",
        "blocks.0.attn",
        "blocks.0.attn.logits",
        "blocks.0.mlp",
        "blocks.1.attn",
        "blocks.1.attn.logits",
        "blocks.1.mlp",
        "readout",
    ]
    assert len(r.scale) == len(WIDTHS) * r.steps * len(r.layers)
    assert math.isnan(r.slope("readout", step=1))  # zero readout: logits are 0 at init


def test_user_model_factories() -> None:
    # A model the tool knows nothing about: an MLP whose hidden width is the checked width.
    # With one AdamW LR at every width (SP) its output grows with width; every leaf module
    # is recorded.
    def factory(w: int):
        def make():
            model = nn.Sequential(nn.Linear(8, w), nn.ReLU(), nn.Linear(w, 3))
            return model, torch.optim.AdamW(model.parameters(), lr=0.05)

        return make

    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,))) for _ in range(4)]
    r = coord_check({w: factory(w) for w in (32, 64, 128, 256)}, batches, seeds=2, name="mlp")
    assert r.layers == ["0", "1", "2"] and r.steps == 4
    assert r.slope("2") > 0.5  # SP readout after Adam steps: grows ~ linearly in width
    with pytest.raises(ValueError, match=">= 2 widths"):
        coord_check({32: factory(32)}, batches)
    with pytest.raises(ValueError, match="steps"):
        coord_check({32: factory(32), 64: factory(64)}, batches, steps=5)


def test_write_outputs(results, tmp_path) -> None:
    paths = write_outputs(list(results.values()), tmp_path)
    assert [p.name for p in paths] == ["coord_check.png", "coord_check.csv", "coord_check.md"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    csv_lines = paths[1].read_text().splitlines()
    assert csv_lines[0] == "preset,width,step,layer,mean_abs"
    assert len(csv_lines) == 1 + 2 * len(WIDTHS) * STEPS * 8
    assert "| readout |" in paths[2].read_text()


def test_cli(tmp_path, capsys) -> None:
    from fused_mup.cli import main as cli_main

    argv = ["--presets", "mup", "--widths", "16,32", "--steps", "2", "--layers", "1"]
    assert cli_main(["coord-check", *argv, "--optimizer", "torch", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "| readout |" in out.out
    assert "coord-check mup" in out.err and "2/2" in out.err  # the tqdm bar, one tick per width
    assert (tmp_path / "coord_check.png").exists()
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "b")]) == 0  # fused_mup.AdamW


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--presets", "mupp"], "unknown presets ['mupp']"),
        (["--widths", "32"], "at least 2 different widths"),
        (["--steps", "0"], "must be >= 1"),
        (["--widths", "30", "64"], "not multiples of --heads 4"),
        (["--widths", "32,x"], "not an integer"),
    ],
    ids=["bad-preset", "one-width", "zero-steps", "odd-width", "not-int"],
)
def test_cli_usage_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
