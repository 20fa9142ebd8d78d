"""Streaming load keeps peak memory near the int8 model's size (a small-scale version of
``benchmarks/bench_loading.py``, which measures a 0.5B model)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    import llm_int8

    def rss(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    folder, warmup = sys.argv[1:3]
    # warm up on a tiny checkpoint of the same family: lazy imports and the first touch of the
    # library code pages are a fixed cost, not memory that grows with the model
    llm_int8.from_pretrained(warmup, progress=False)
    before = rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    model = llm_int8.from_pretrained(folder, progress=False)
    peak = rss("VmHWM")
    nbytes = sum(t.numel() * t.element_size() for t in {*model.parameters(), *model.buffers()})
    print(json.dumps({"peak_growth": peak - before, "model_bytes": nbytes}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_streaming_peak_rss_is_near_int8_size(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=12,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).half().save_pretrained(tmp_path / "model", max_shard_size="40MB")
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 1, 96, 128
    LlamaForCausalLM(config).half().save_pretrained(tmp_path / "warmup")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "model"), str(tmp_path / "warmup")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    fp16_bytes = sum(f.stat().st_size for f in (tmp_path / "model").glob("*.safetensors"))
    assert result["model_bytes"] < 0.55 * fp16_bytes
    # a float copy of the model would be ~2x; the 0.5B benchmark measures 1.01x
    assert result["peak_growth"] < 1.3 * result["model_bytes"], result
