"""Issue 14: each case that returned wrong numbers without an error, or failed badly, as a test.

Items 1-11 of the issue, in its order; the numerics policies they settle are in the README's
numerics section.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import time

import pytest
import torch
from _hf_tiny import VOCAB, logits, tiny_model
from torch import nn

import llm_int8
from llm_int8 import CheckpointError, Int8Linear, quantize_model
from llm_int8.cli import main
from llm_int8.integrations.huggingface import saving
from llm_int8.integrations.huggingface.checkpoint import SafetensorsFile
from llm_int8.integrations.huggingface.quantizer import LLMInt8Config
from llm_int8.ops import PackedWeightCache
from llm_int8.ops.choice import admission
from llm_int8.ops.kernels import probes
from llm_int8.primitives import int8_matmul_reference

# ---- 1. the exact fallback beyond int32 ---------------------------------------------------------


def test_exact_reference_never_wraps_beyond_int32():
    K = 140_000  # 127**2 * K = 2.26e9 > 2**31
    A = torch.full((2, K), 127, dtype=torch.int8)
    A[1] = -127
    B = torch.full((1, K), 127, dtype=torch.int8)
    C = int8_matmul_reference(A, B)
    assert C.dtype == torch.int64 and C[:, 0].tolist() == [127 * 127 * K, -127 * 127 * K]
    small = int8_matmul_reference(A[:, :1000], B[:, :1000])
    assert small.dtype == torch.int32  # what the integer GEMMs return, wherever it holds the sums


@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
def test_wide_layer_with_correlated_codes_is_right(activation):
    linear = nn.Linear(140_000, 1, bias=False)
    nn.init.constant_(linear.weight, 0.01)
    layer = Int8Linear.from_linear(linear, activation=activation, weight_only_max_tokens=0)
    y = layer(torch.ones(17, 140_000))
    torch.testing.assert_close(y, torch.full((17, 1), 1400.0), rtol=1e-4, atol=0)


# ---- 2. safetensors byte ranges and shard index paths ------------------------------------------


def _write_safetensors(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _two_tensor_header():
    return {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    }


def test_overlapping_offsets_are_refused(tmp_path):
    header = _two_tensor_header()
    header["b"]["data_offsets"] = [6, 14]  # shifted by -2 bytes: reads half of "a"
    _write_safetensors(tmp_path / "x.safetensors", header, bytes(16))
    with pytest.raises(CheckpointError, match=r"x\.safetensors: tensor 'b' starts at data byte 6.*overlapping"):
        SafetensorsFile(tmp_path / "x.safetensors")


def test_hole_in_offsets_is_refused(tmp_path):
    header = _two_tensor_header()
    header["b"]["data_offsets"] = [10, 18]
    _write_safetensors(tmp_path / "x.safetensors", header, bytes(18))
    with pytest.raises(CheckpointError, match=r"tensor 'b' .* a hole"):
        SafetensorsFile(tmp_path / "x.safetensors")


def test_overlapping_offsets_in_a_model_are_refused(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    victim = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[3]
    header[victim]["data_offsets"] = [o - 2 for o in header[victim]["data_offsets"]]
    _write_safetensors(path, header, raw[8 + n :])
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor '{victim}'"):
        llm_int8.from_pretrained(tmp_path, progress=False)


@pytest.mark.parametrize("where", ["/etc/passwd", "../outside.safetensors", "sub/../../outside.safetensors"])
def test_shard_index_cannot_point_outside_the_folder(tmp_path, where):
    folder = tmp_path / "model"
    tiny_model("llama").save_pretrained(folder, max_shard_size="40KB")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = where
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' is mapped to .*outside the checkpoint folder"):
        llm_int8.from_pretrained(folder, progress=False)


# ---- 3. the packed weight and row sums follow every write ---------------------------------------


def _write_zero(layer: Int8Linear, route: str) -> None:
    if route == "data":
        layer.weight_int8.data.copy_(torch.zeros_like(layer.weight_int8))
    elif route == "numpy":
        layer.weight_int8.numpy()[:] = 0
    elif route == "inference_load":
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        state["weight_int8"].zero_()
        with torch.inference_mode():
            layer.load_state_dict(state)
    elif route == "inference_copy":
        with torch.inference_mode():
            layer.weight_int8.copy_(torch.zeros_like(layer.weight_int8))
    elif route == "no_grad_copy":
        with torch.no_grad():
            layer.weight_int8.copy_(torch.zeros_like(layer.weight_int8))
    elif route == "assign":
        layer.weight_int8 = torch.zeros_like(layer.weight_int8)
    else:
        raise ValueError(route)


ROUTES = ["data", "numpy", "inference_load", "inference_copy", "no_grad_copy", "assign"]


@pytest.mark.parametrize("backend", [probes.FBGEMM, probes.ONEDNN, probes.REFERENCE])
@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
@pytest.mark.parametrize("route", ROUTES)
def test_written_weight_is_never_stale(monkeypatch, backend, activation, route):
    if backend == probes.ONEDNN and not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        pytest.skip("oneDNN int8 kernels are not in this torch build")
    monkeypatch.setattr(admission, "fixed_kernel", lambda: backend)
    layer = Int8Linear.from_linear(nn.Linear(64, 32), activation=activation, weight_only_max_tokens=0)
    x = torch.randn(40, 64)
    layer(x)  # builds the caches
    _write_zero(layer, route)
    torch.testing.assert_close(layer(x), layer.bias.expand(40, -1), rtol=0, atol=0)


def test_weights_built_in_inference_mode_follow_writes():
    with torch.inference_mode():
        layer = Int8Linear.from_linear(nn.Linear(64, 32), weight_only_max_tokens=0)
        x = torch.randn(40, 64)
        layer(x)
        layer.weight_int8.copy_(torch.zeros_like(layer.weight_int8))  # an inference tensor: no version counter
        assert torch.equal(layer(x), layer.bias.expand(40, -1))


def test_write_through_an_old_reference_needs_weight_changed():
    # the documented limit: a write the version counter cannot see, through a reference taken before
    # the last forward; weight_changed() (or reading layer.weight_int8 again) makes it seen
    layer = Int8Linear.from_linear(nn.Linear(64, 32), weight_only_max_tokens=0)
    x = torch.randn(40, 64)
    codes = layer.weight_int8.numpy()
    layer(x)
    codes[:] = 0
    layer.weight_changed()
    assert torch.equal(layer(x), layer.bias.expand(40, -1))


def test_concurrent_first_calls_build_once():
    builds = []
    barrier = threading.Barrier(4)

    def build(weight):
        builds.append(1)
        time.sleep(0.01)  # a real packing takes long enough for the other threads to arrive
        return weight.sum()

    caches = [PackedWeightCache(build) for _ in range(10)]
    weights = [torch.ones(4, 4, dtype=torch.int8) for _ in caches]

    def worker():
        barrier.wait()
        for cache, weight in zip(caches, weights, strict=True):
            assert cache.get(weight) == 16

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == len(caches)


# ---- 4. meta and to_empty ------------------------------------------------------------------------


def test_layer_on_meta_to_empty():
    layer = Int8Linear(8, 4, device="meta").to_empty(device="cpu")
    assert layer.weight_int8.device.type == "cpu" and layer.weight_scale.dtype == torch.float32
    half = Int8Linear(8, 4, device="meta", dtype=torch.float16).to_empty(device="cpu")
    assert half.weight_scale.dtype == torch.float32 and half.bias.dtype == torch.float16


def test_model_on_meta_to_empty_then_loaded_matches():
    from transformers import LlamaForCausalLM

    from llm_int8.integrations.surgery.swap import swap_linears_on_meta

    ours = quantize_model(tiny_model("llama"))
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(ours.config)
    names = [n for n, m in ours.named_modules() if isinstance(m, Int8Linear)]
    activation = next(m.activation for m in ours.modules() if isinstance(m, Int8Linear))
    swap_linears_on_meta(skeleton, names, 6.0, activation=activation)
    skeleton = skeleton.to_empty(device="cpu")
    skeleton.load_state_dict(ours.state_dict())
    # the int8 layers now compute what the loaded ones do (non-persistent buffers such as rotary
    # frequencies are not in a state dict: to_empty leaves them for the model to initialise)
    for name in names:
        theirs, mine = ours.get_submodule(name), skeleton.get_submodule(name)
        x = torch.randn(5, mine.in_features)
        assert torch.equal(mine(x), theirs(x)), name


# ---- 5. the final swap of save_pretrained(overwrite=True) ----------------------------------------


def _old_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "weights").write_text("old")
    return target


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "ckpt")


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
@pytest.mark.parametrize("step", range(4))
def test_overwrite_leaves_old_or_new_never_none(tmp_path, monkeypatch, exchange, step):
    """Ctrl-C at each file-system step of the final swap: the target holds one whole checkpoint."""
    target = _old_checkpoint(tmp_path)
    calls = []

    def interrupting(fn):
        def wrapper(*args, **kwargs):
            calls.append(fn.__name__)
            if len(calls) == step + 1:
                raise KeyboardInterrupt
            return fn(*args, **kwargs)

        return wrapper

    # without renameat2 (other systems): two renames, with a window between them
    monkeypatch.setattr(saving, "_exchange", interrupting(saving._exchange) if exchange else lambda a, b: False)
    monkeypatch.setattr(saving.os, "replace", interrupting(os.replace))
    monkeypatch.setattr(saving.shutil, "rmtree", interrupting(shutil.rmtree))
    try:
        with saving.atomic_directory(target, overwrite=True) as tmp:
            (tmp / "weights").write_text("new")
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    # interrupted before a rename took effect: the old one; after the swap (deleting the old): the new
    expected = "old" if interrupted and calls[step] in ("_exchange", "replace") else "new"
    assert (target / "weights").read_text() == expected


def test_failed_write_leaves_the_old_checkpoint(tmp_path):
    target = _old_checkpoint(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with saving.atomic_directory(target, overwrite=True) as tmp:
            (tmp / "weights").write_text("half")
            raise KeyboardInterrupt
    assert (target / "weights").read_text() == "old" and _leftovers(tmp_path) == []


def test_overwrite_uses_an_atomic_exchange_on_linux(tmp_path):
    if not saving._exchange(tmp_path, tmp_path):  # exchanging a folder with itself: a no-op
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    target = _old_checkpoint(tmp_path)
    with saving.atomic_directory(target, overwrite=True) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new" and _leftovers(tmp_path) == []


# ---- 6. one module name is a one-element list ----------------------------------------------------


def test_single_module_name_is_not_split_into_characters(tmp_path):
    config = LLMInt8Config(modules_to_not_convert="lm_head", skip_modules="down_proj")
    assert config.modules_to_not_convert == ["lm_head"] and config.skip_modules == ["down_proj"]
    with pytest.raises(ValueError, match="non-empty module names"):
        LLMInt8Config(modules_to_not_convert=["lm_head", 3])
    # a saved config edited that way reloads with lm_head in float
    llm_int8.save_pretrained(quantize_model(tiny_model("llama")), tmp_path)
    config_path = tmp_path / "config.json"
    saved = json.loads(config_path.read_text())
    saved["quantization_config"]["modules_to_not_convert"] = "lm_head"
    config_path.write_text(json.dumps(saved))
    model = llm_int8.from_pretrained(tmp_path, progress=False)
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, Int8Linear)


# ---- 7. a state dict with the wrong dtype ---------------------------------------------------------


@pytest.mark.parametrize(
    "key,dtype", [("weight_int8", torch.float32), ("weight_int8", torch.int32), ("weight_scale", torch.int8)]
)
def test_load_refuses_a_cast(key, dtype):
    layer = Int8Linear.from_linear(nn.Linear(8, 4))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    state = dict(before)
    state[key] = state[key].to(dtype)
    with pytest.raises(RuntimeError, match=rf"{key}: expected .*got {dtype}"):
        layer.load_state_dict(state)
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in before.items())


# ---- 8. bitsandbytes checkpoints reload with bitsandbytes' numerics --------------------------------


def test_bitsandbytes_export_reloads_with_absmax(tmp_path):
    ours = quantize_model(tiny_model("gpt2"), activation="absmax")
    llm_int8.save_bitsandbytes(ours, tmp_path / "bnb")
    again = llm_int8.from_pretrained(tmp_path / "bnb", progress=False)
    assert {m.activation for m in again.modules() if isinstance(m, Int8Linear)} == {"absmax"}
    torch.testing.assert_close(logits(again), logits(ours), rtol=1e-5, atol=1e-5)
    asked = llm_int8.from_pretrained(tmp_path / "bnb", progress=False, activation="zeropoint")
    assert {m.activation for m in asked.modules() if isinstance(m, Int8Linear)} == {"zeropoint"}


# ---- 9, 10. the command line: one line, exit 2 ------------------------------------------------------


@pytest.fixture
def float_dir(tmp_path):
    folder = tmp_path / "fp"
    tiny_model("llama").save_pretrained(folder)
    return folder


def _one_line_error(capsys) -> str:
    """The one error line on stderr (progress bars from the library may come before it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "config_text,expected",
    [("{not json", "not valid JSON"), ('"quantization_config": "x"', "quantization_config is 'x'")],
)
def test_quantize_with_a_bad_config_is_one_line(float_dir, tmp_path, capsys, config_text, expected):
    config_path = float_dir / "config.json"
    if config_text.startswith('"'):
        config = json.loads(config_path.read_text())
        config["quantization_config"] = "x"
        config_path.write_text(json.dumps(config))
    else:
        config_path.write_text(config_text)
    assert main(["quantize", str(float_dir), str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert "config.json" in err and expected in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--prompt", ""],
        ["demo", "--prompt", "  "],
        ["eval", "--text", "t.txt", "--json", "{tmp}"],
        ["outliers", "--text", "t.txt", "--json", "r.json", "--modules", "("],
        ["outliers", "--text", "t.txt", "--json", "r.json", "--ablation-tokens", "-5"],
        ["outliers", "--text", "t.txt", "--json", "{tmp}"],
        ["quantize", "a", "b", "--max-shard-size", "lots"],
        ["demo", "--threshold", "inf"],
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(argv, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in _one_line_error(capsys)


def test_missing_model_is_one_line(capsys, monkeypatch):
    from llm_int8.integrations.huggingface import loading

    def offline(source):  # the hub is out of reach in the tests: what an offline lookup raises
        raise OSError(f"{source} is not a local folder and the hub cannot be reached\nsecond line")

    monkeypatch.setattr(loading, "resolve_model_source", offline)
    assert main(["demo", "--model", "missing/path"]) == 2
    assert "missing/path" in _one_line_error(capsys)


def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    from llm_int8.cli import demo

    def boom(args):
        raise RuntimeError("something broke\nwith details")

    monkeypatch.setattr(demo, "_cmd_demo", boom)  # looked up when main() builds the parser
    assert main(["demo"]) == 1
    err = _one_line_error(capsys)
    assert "RuntimeError: something broke" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="something broke"):
        main(["--debug", "demo"])


# ---- 11. edges ------------------------------------------------------------------------------------------


def test_inf_times_a_zero_code_is_nan_as_inf_times_zero():
    # policy: the float part multiplies by the stored weight; a code of 0 is a weight of exactly 0
    linear = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 1e-4, 0.5, 0.5], [1.0, 1.0, 0.5, 0.5]]))
    layer = Int8Linear.from_linear(linear, weight_only_max_tokens=0)
    assert layer.weight_int8[0, 1] == 0  # 1e-4 rounds to code 0 at a row absmax of 1
    x = torch.tensor([[0.5, float("inf"), 0.25, 0.5]])
    y = layer(x)
    assert torch.isnan(y[0, 0]) and y[0, 1] == float("inf")
    assert torch.isnan(x @ layer.dequantized_weight().T)[0, 0]  # what nn.Linear gives for that weight


@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
@pytest.mark.parametrize("magnitude", [1e36, 1e-37])
def test_huge_and_tiny_rows_keep_their_accuracy(activation, magnitude):
    layer = Int8Linear.from_linear(nn.Linear(64, 8, bias=False), threshold=0.0, activation=activation)
    layer.weight_only_max_tokens = 0
    x = torch.randn(3, 64) * magnitude
    exact = x.double() @ layer.dequantized_weight(torch.float64).T
    err = ((layer(x).double() - exact).norm() / exact.norm()).item()
    assert err < 0.02


def test_empty_float_dims_and_infinite_threshold():
    assert Int8Linear(8, 4, float_dims=[]).float_dims is None
    assert Int8Linear.from_linear(nn.Linear(8, 4), float_dims=()).float_dims is None
    with pytest.raises(ValueError, match="finite"):
        Int8Linear(8, 4, threshold=float("inf"))


def test_outliers_shortens_its_default_window(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "fp"
    tiny_model("llama").save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    ).save_pretrained(folder)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i % (VOCAB - 3)}" for i in range(300)))
    argv = ["outliers", "--model", str(folder), "--text", str(text), "--max-tokens", "40", "--json"]
    assert main([*argv, str(tmp_path / "r.json"), "--ablation-tokens", "0"]) == 0
    assert "window shortened from 2048 to 40 tokens" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["window"] == 40
    # an explicit window longer than the text is still an error, in one line
    assert main([*argv, str(tmp_path / "r2.json"), "--window", "64"]) == 2
    assert "fewer than one window of 64" in _one_line_error(capsys)
