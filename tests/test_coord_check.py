"""Coordinate check: logits flat in width under mup, growing under sp (CPU, a few seconds)."""

from __future__ import annotations

import math

import pytest

from fused_mup.coord_check import coord_check, main, write_outputs

# Small and fast on CPU; zero-init readout under mup, so logits show only the learned part.
FAST = {"steps": 6, "lr": 3e-2, "n_head": 2, "seq_len": 16, "batch_size": 4, "optimizer": "torch"}
WIDTHS = (16, 32, 64, 128)


@pytest.fixture(scope="module")
def results():
    return {p: coord_check(p, WIDTHS, **FAST) for p in ("sp", "mup")}


def test_logit_slope_flat_under_mup_positive_under_sp(results) -> None:
    mup_slope = results["mup"].slope("lm_head")
    sp_slope = results["sp"].slope("lm_head")
    assert abs(mup_slope) < 0.3, mup_slope
    assert sp_slope > 0.45, sp_slope
    assert sp_slope - mup_slope > 0.4


def test_attention_logits_grow_under_sp(results) -> None:
    for layer in ("blocks.0.attn_logits", "blocks.1.attn_logits"):
        assert results["sp"].slope(layer) > 0.8
        assert results["sp"].slope(layer) > results["mup"].slope(layer) + 0.8


def test_records_every_layer_and_step(results) -> None:
    r = results["mup"]
    assert r.layers == [
        "wte",
        "blocks.0.attn_logits",
        "blocks.0.attn",
        "blocks.0.mlp",
        "blocks.1.attn_logits",
        "blocks.1.attn",
        "blocks.1.mlp",
        "lm_head",
    ]
    assert len(r.scale) == len(WIDTHS) * r.steps * len(r.layers)
    assert math.isnan(r.slope("lm_head", step=1))  # zero readout: logits are 0 at init


def test_write_outputs(results, tmp_path) -> None:
    paths = write_outputs(list(results.values()), tmp_path)
    assert [p.name for p in paths] == ["coord_check.png", "coord_check.csv", "coord_check.md"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    csv_lines = paths[1].read_text().splitlines()
    assert csv_lines[0] == "preset,width,step,layer,mean_abs"
    assert len(csv_lines) == 1 + 2 * len(WIDTHS) * 6 * 8
    assert "| lm_head |" in paths[2].read_text()


def test_cli(tmp_path, capsys) -> None:
    from fused_mup.cli import main as cli_main

    argv = ["--presets", "mup", "--widths", "16", "32", "--steps", "2", "--layers", "1"]
    assert cli_main(["coord-check", *argv, "--optimizer", "torch", "--out", str(tmp_path)]) == 0
    assert "| lm_head |" in capsys.readouterr().out
    assert (tmp_path / "coord_check.png").exists()
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0  # default optimizer ("auto")
