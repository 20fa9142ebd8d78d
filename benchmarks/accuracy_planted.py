"""Relative error vs float64 of LLM.int8() and pure vector-wise int8 on activations with planted outlier dims.

Run: python benchmarks/accuracy_planted.py  (prints a Markdown table; numbers in README "Accuracy").
Activations N(0, 1) with 6 feature dims at magnitude 8-20 (random sign), weights N(0, 1/K).
"""

import torch

from llm_int8 import Int8Linear

torch.manual_seed(0)
print("| shape | M | dtype | LLM.int8() | vector-wise | nn.Linear in dtype |")
print("| --- | --- | --- | --- | --- | --- |")
for K, N, M in [(576, 1536, 512), (4096, 4096, 512)]:
    lin = torch.nn.Linear(K, N)
    torch.nn.init.normal_(lin.weight, std=K**-0.5)
    X = torch.randn(M, K)
    dims = torch.randperm(K)[:6]
    X[:, dims] = (8 + 12 * torch.rand(M, 6)) * torch.sign(torch.randn(M, 6))
    exact = X.double() @ lin.weight.double().T + lin.bias.double()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        row = []
        for th in (6.0, 0.0):
            q = Int8Linear.from_linear(lin, threshold=th)
            Y = q(X.to(dtype)).double()
            row.append(((Y - exact).norm() / exact.norm()).item())
        fl = ((lin.to(dtype)(X.to(dtype)).double() - exact).norm() / exact.norm()).item()
        lin.float()
        print(f"| {K}x{N} | {M} | {str(dtype)[6:]} | {row[0]:.5f} | {row[1]:.5f} | {fl:.5f} |")
