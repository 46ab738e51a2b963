"""Models and expected roles shared by the preset tests (three families: GPT-2, Llama, MLP)."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 50


class GPT2Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)


class GPT2Like(nn.Module):
    def __init__(self, d: int, tied: bool = False, n_layer: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.wpe = nn.Embedding(16, d)
        self.h = nn.ModuleList(GPT2Block(d) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight


class SwiGLU(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, 3 * d, bias=False)
        self.up_proj = nn.Linear(d, 3 * d, bias=False)
        self.down_proj = nn.Linear(3 * d, d, bias=False)


class LlamaBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(d)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d // 2, bias=False)  # GQA: fewer kv heads
        self.v_proj = nn.Linear(d, d // 2, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(d)
        self.mlp = SwiGLU(d)


class LlamaLike(nn.Module):
    def __init__(self, d: int, n_layer: int = 2) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, d)
        self.layers = nn.ModuleList(LlamaBlock(d) for _ in range(n_layer))
        self.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)


def mlp(w: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 3))


def gpt2_roles(n: str) -> str:
    if n.startswith(("wte", "wpe")):
        return "embedding"
    if n == "lm_head.weight":
        return "readout"
    if n.endswith("bias") or ".ln_" in n or n.startswith("ln_f"):
        return "vector"
    return "hidden"


def llama_roles(n: str) -> str:
    if n.startswith("embed_tokens"):
        return "embedding"
    if n == "lm_head.weight":
        return "readout"
    return "vector" if "norm" in n else "hidden"


def mlp_roles(n: str) -> str:
    if n.endswith("bias"):
        return "vector"
    return {"0.weight": "embedding", "2.weight": "hidden", "4.weight": "readout"}[n]


FAMILIES = {
    "gpt2": (GPT2Like, gpt2_roles),
    "llama": (LlamaLike, llama_roles),
    "mlp": (mlp, mlp_roles),
}


def roles_of(groups: list[dict]) -> dict[str, str]:
    return {n: g["role"] for g in groups for n in g["param_names"]}


class RawParam(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.w_qkv = nn.Parameter(torch.randn(d, 3 * d))
        self.head = nn.Linear(d, VOCAB)


class HFConv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D: weight stored (in_features, out_features)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))


class GPT2Conv(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.c_attn = HFConv1D(3 * d, d)
        self.c_fc = HFConv1D(4 * d, d)
        self.c_proj = HFConv1D(d, 4 * d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)


HFConv1D.__name__ = "Conv1D"


M = 4.0


LR_TABLE = {
    "sp": {"embedding": 1, "hidden": 1, "readout": 1, "vector": 1},
    "mup": {"embedding": 1, "hidden": 1 / M, "readout": 1, "vector": 1},
    "mup_lr": {"embedding": 1, "hidden": 1 / M, "readout": 1 / M, "vector": 1},
    "sp_emb": {"embedding": M, "hidden": 1, "readout": 1, "vector": 1},
    "sp_emb_sqrt": {"embedding": 2.0, "hidden": 1, "readout": 1, "vector": 1},
}
