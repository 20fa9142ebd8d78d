"""Property tests (hypothesis) for the four classes of silent failure that issue 14 found by probing.

* the op: any shape, dtype, threshold and activation, values from 1e-37 to 1e36, zero and constant
  rows, strided inputs, non-finite values -- against float64 with a bound derived from the codes;
* module state: sequences of weight writes by every route, loads in inference mode, dtype and
  device moves, meta + ``to_empty``: the layer always computes what its state dict says;
* loaders: generated corruptions of safetensors headers and offsets, shard indexes and configs:
  a ``CheckpointError`` naming the file (and the tensor), nothing left on disk -- or, where the
  corruption is harmless, exactly the original weights;
* the CLI: every subcommand with a bad argument exits 2 with one line.

Example counts are bounded (profile "ci", the default: about 20 s on 2 cores); ``HYPOTHESIS_PROFILE=long``
searches ten times longer.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from _hf_tiny import tiny_model
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import llm_int8
from llm_int8 import CheckpointError, Int8Linear
from llm_int8.cli import main
from llm_int8.ops import int8_linear
from llm_int8.primitives import rowwise_quantize

pytestmark = pytest.mark.property

settings.register_profile(
    "ci", max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _examples(n: int) -> int:
    """``n`` examples in the "ci" profile, ten times as many in "long"."""
    return n * 10 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else n


# ---- the op against float64 ---------------------------------------------------------------------

# value scales per dtype: the input must be representable and the output must not overflow
SCALES = {
    torch.float32: [1e-37, 1e-20, 1e-3, 1.0, 50.0, 1e20, 1e36],
    torch.bfloat16: [1e-30, 1e-3, 1.0, 50.0, 1e30],
    torch.float16: [1e-2, 1.0, 30.0],
}
UNIT_ROUNDING = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@st.composite
def op_cases(draw):
    dtype = draw(st.sampled_from(list(SCALES)))
    M = draw(st.integers(0, 24))
    K = draw(st.integers(1, 80))
    N = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from(SCALES[dtype]))
    X = torch.randn(M, K, generator=g, dtype=torch.float64) * scale
    if M and draw(st.booleans()):  # outlier columns, as in real hidden states
        cols = torch.randint(0, K, (draw(st.integers(1, 3)),), generator=g)
        X[:, cols] *= draw(st.sampled_from([8.0, 100.0]))
    if M:
        row = draw(st.integers(0, M - 1))
        kind = draw(st.sampled_from(["none", "zero", "constant", "one-sided"]))
        if kind == "zero":
            X[row] = 0
        elif kind == "constant":
            X[row] = scale
        elif kind == "one-sided":
            X[row] = X[row].abs()
    W = torch.randn(N, K, generator=g) / K**0.5
    if draw(st.booleans()):
        W[:, torch.randint(0, K, (1,), generator=g)] = 0  # a column of code 0
    W_i8, s_w = rowwise_quantize(W)
    threshold = draw(st.sampled_from([0.0, 0.5, 6.0, 1e9]))
    activation = draw(st.sampled_from(["absmax", "zeropoint"]))
    layout = draw(st.sampled_from(["2d", "3d", "strided"]))
    return X.to(dtype), W_i8, s_w, threshold, activation, layout


def _shaped(X: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "3d" and X.shape[0] % 2 == 0:
        return X.reshape(2, X.shape[0] // 2, X.shape[1])  # (batch, tokens, K)
    if layout == "strided":  # every other column of a wider tensor: a non-contiguous view
        wide = torch.zeros(X.shape[0], 2 * X.shape[1], dtype=X.dtype)
        wide[:, ::2] = X
        return wide[:, ::2]
    return X


@given(op_cases())
def test_op_is_within_its_quantization_bound_of_float64(case):
    X, W_i8, s_w, threshold, activation, layout = case
    x = _shaped(X, layout)
    y = int8_linear(x, W_i8, s_w, None, threshold, activation=activation)
    assert y.dtype == X.dtype and y.shape == (*x.shape[:-1], W_i8.shape[0])
    X64 = X.double()
    W = W_i8.double() * s_w.double()[:, None]  # (N, K): the weight the layer holds
    exact = X64 @ W.T
    # quantizing a row moves each x by at most half a step: step = absmax / 127 (absmax) or range / 254
    if activation == "absmax":
        step = X64.abs().amax(dim=1, keepdim=True) / 127
    else:
        step = (X64.clamp_min(0).amax(dim=1, keepdim=True) - X64.clamp_max(0).amin(dim=1, keepdim=True)) / 254
    K = X.shape[1]
    bound = (
        step / 2 * W.abs().sum(dim=1)[None, :]  # int8 codes of x
        + (K + 8) * 2.0**-23 * (X64.abs() @ W.abs().T)  # float32 arithmetic
        + UNIT_ROUNDING[X.dtype] * exact.abs()  # the output dtype
        + 1e-44  # float32 subnormals
    )
    err = (y.reshape(-1, W_i8.shape[0]).double() - exact).abs()
    assert torch.isfinite(y).all()
    assert (err <= bound * 1.01).all(), (err / bound).max()


@given(
    M=st.integers(1, 12),
    K=st.integers(2, 40),
    where=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 39)), min_size=1, max_size=4),
    value=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    threshold=st.sampled_from([0.0, 6.0, 1e9]),
    activation=st.sampled_from(["absmax", "zeropoint"]),
)
@settings(max_examples=_examples(25))
def test_non_finite_inputs_are_non_finite_exactly_where_float64_is(M, K, where, value, threshold, activation):
    X = torch.randn(M, K)
    for m, k in where:
        X[m % M, k % K] = value
    W_i8, s_w = rowwise_quantize(torch.randn(8, K))
    y = int8_linear(X, W_i8, s_w, None, threshold, activation=activation)
    exact = X.double() @ (W_i8.double() * s_w.double()[:, None]).T
    assert torch.equal(torch.isfinite(y), torch.isfinite(exact))
    assert torch.equal(torch.isnan(y), torch.isnan(exact))


# ---- module state --------------------------------------------------------------------------------

STATE_OPS = [
    "forward",
    "write_data",
    "write_numpy",
    "write_no_grad",
    "write_inference",
    "load",
    "load_inference",
    "assign",
    "half",
    "bfloat16",
    "float",
    "meta_to_empty_and_load",
    "deepcopy",
]


def _apply_op(layer: Int8Linear, op: str, codes: torch.Tensor) -> Int8Linear:
    if op == "write_data":
        layer.weight_int8.data.copy_(codes)
    elif op == "write_numpy":
        layer.weight_int8.numpy()[:] = codes.numpy()
    elif op == "write_no_grad":
        with torch.no_grad():
            layer.weight_int8.copy_(codes)
    elif op == "write_inference":
        with torch.inference_mode():
            layer.weight_int8.copy_(codes)
    elif op in ("load", "load_inference"):
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        state["weight_int8"] = codes.clone()
        if op == "load":
            layer.load_state_dict(state)
        else:
            with torch.inference_mode():
                layer.load_state_dict(state)
    elif op == "assign":
        layer.weight_int8 = codes.clone()
    elif op in ("half", "bfloat16", "float"):
        layer = getattr(layer, op)()
    elif op == "meta_to_empty_and_load":
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        layer = layer.to("meta").to_empty(device="cpu")
        layer.load_state_dict(state)
    elif op == "deepcopy":
        layer = copy.deepcopy(layer)
    return layer


def _fresh(layer: Int8Linear) -> Int8Linear:
    """The same layer rebuilt from its state dict alone: no cache can be stale in it."""
    state = layer.state_dict()
    fresh = Int8Linear(
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        threshold=layer.threshold,
        activation=layer.activation,
        weight_only_max_tokens=layer.weight_only_max_tokens,
        dtype=layer.bias.dtype if layer.bias is not None else None,
    )
    fresh.load_state_dict(state)
    return fresh


@given(
    ops=st.lists(st.sampled_from(STATE_OPS), min_size=1, max_size=8),
    activation=st.sampled_from(["absmax", "zeropoint"]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=_examples(30))
def test_layer_always_computes_what_its_state_says(ops, activation, seed):
    g = torch.Generator().manual_seed(seed)
    layer = Int8Linear.from_linear(nn.Linear(48, 20), activation=activation, weight_only_max_tokens=0)
    x = torch.randn(24, 48, generator=g)  # above every weight-only limit: the packed int8 path
    layer(x)  # the caches exist before the first write
    for op in ops:
        codes = torch.randint(-127, 128, (20, 48), generator=g, dtype=torch.int8)
        layer = _apply_op(layer, op, codes)
        y = layer(x)
        if op.startswith(("write", "load", "assign")):
            assert torch.equal(layer.weight_int8, codes)
        assert layer.weight_scale.dtype == torch.float32
        assert torch.equal(y, _fresh(layer)(x)), op


# ---- loaders ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A tiny Llama saved single-file and sharded, and its original weights."""
    root = tmp_path_factory.mktemp("pristine")
    model = tiny_model("llama")
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="40KB")
    reference = {
        k: v.clone() for k, v in llm_int8.from_pretrained(root / "single", progress=False).state_dict().items()
    }
    return _Pristine(root, reference)


class _Pristine(tuple):
    def __new__(cls, root, reference):
        return super().__new__(cls, (root, reference))

    def __repr__(self) -> str:  # hypothesis prints the fixture with a failing example
        return f"pristine checkpoints in {self[0]}"


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _load_or_explain(folder: Path, reference, file_name: str, tensor: str | None, work: Path) -> None:
    """Either a CheckpointError naming the file (and the tensor), or exactly the original weights."""
    before = _listing(work)
    try:
        model = llm_int8.from_pretrained(folder, progress=False)
    except CheckpointError as err:
        message = str(err)
        assert file_name in message, message
        if tensor is not None:
            assert tensor in message, message
    else:
        state = model.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert _listing(work) == before  # nothing written beside the checkpoint or in the work folder


SAFETENSORS_CORRUPTIONS = ["header_length", "header_byte", "dtype", "shape", "offsets", "truncate", "swap_offsets"]


@given(
    kind=st.sampled_from(SAFETENSORS_CORRUPTIONS),
    pick=st.integers(0, 10**6),
    delta=st.integers(-64, 64).filter(bool),
    junk=st.sampled_from(["F32", "I8", "F16", "Q4", "", 3]),
)
@settings(max_examples=_examples(30), suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_corrupt_safetensors_is_named_and_leaves_nothing(pristine, tmp_path, kind, pick, delta, junk):
    root, reference = pristine
    work = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example: hypothesis reruns examples
    folder = work / "model"
    shutil.copytree(root / "single", folder)
    path = folder / "model.safetensors"
    header, data = _header(path)
    names = sorted(k for k in header if k != "__metadata__")
    victim = names[pick % len(names)]
    tensor = victim
    if kind == "header_length":
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        path.write_bytes(struct.pack("<Q", max(0, n + delta * 997)) + raw[8:])
        tensor = None
    elif kind == "header_byte":
        raw = bytearray(path.read_bytes())
        n = struct.unpack("<Q", raw[:8])[0]
        raw[8 + pick % n] = (raw[8 + pick % n] + delta) % 256
        path.write_bytes(bytes(raw))
        tensor = None  # which tensor a flipped byte hits is not known
    elif kind == "dtype":
        assume(junk != header[victim]["dtype"])
        header[victim]["dtype"] = junk
        _write(path, header, data)
    elif kind == "shape":
        shape = header[victim]["shape"]
        header[victim]["shape"] = [max(-1, d + delta) for d in shape] if shape else [delta]
        _write(path, header, data)
    elif kind == "offsets":
        header[victim]["data_offsets"] = [o + delta for o in header[victim]["data_offsets"]]
        _write(path, header, data)
    elif kind == "swap_offsets":
        other = names[(pick + 1 + abs(delta)) % len(names)]
        assume(other != victim)
        header[victim]["data_offsets"], header[other]["data_offsets"] = (
            header[other]["data_offsets"],
            header[victim]["data_offsets"],
        )
        tensor = None  # either of the two is named
        _write(path, header, data)
    elif kind == "truncate":
        size = path.stat().st_size
        os.truncate(path, pick % size)
        tensor = None
    _load_or_explain(folder, reference, "model.safetensors", tensor, work)


INDEX_CORRUPTIONS = ["absolute", "parent", "missing_file", "not_a_string", "not_json", "no_weight_map", "moved"]


@given(kind=st.sampled_from(INDEX_CORRUPTIONS), pick=st.integers(0, 10**6))
@settings(max_examples=_examples(15), suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_corrupt_shard_index_is_named_and_leaves_nothing(pristine, tmp_path, kind, pick):
    root, reference = pristine
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    folder = work / "model"
    shutil.copytree(root / "sharded", folder)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    names = sorted(index["weight_map"])
    victim = names[pick % len(names)]
    shards = sorted(set(index["weight_map"].values()))
    tensor = victim
    if kind == "absolute":
        index["weight_map"][victim] = str((folder / index["weight_map"][victim]).resolve())
    elif kind == "parent":
        index["weight_map"][victim] = "../model/" + index["weight_map"][victim]
    elif kind == "missing_file":
        index["weight_map"][victim] = "model-99999-of-99999.safetensors"
    elif kind == "not_a_string":
        index["weight_map"][victim] = pick
    elif kind == "moved":  # the tensor is listed in a shard that does not hold it
        other = [s for s in shards if s != index["weight_map"][victim]]
        index["weight_map"][victim] = other[pick % len(other)]
    if kind == "not_json":
        index_path.write_text(json.dumps(index)[: pick % 50])
        tensor = None
    elif kind == "no_weight_map":
        index_path.write_text(json.dumps({"metadata": {}}))
        tensor = None
    else:
        index_path.write_text(json.dumps(index))
    name = "model-99999-of-99999.safetensors" if kind == "missing_file" else None
    if kind == "moved":
        name = index["weight_map"][victim]
    _load_or_explain(folder, reference, name or "model.safetensors.index.json", tensor, work)


CONFIG_CORRUPTIONS = {
    "not_json": lambda c: "{" + json.dumps(c)[5:],
    "a_list": lambda c: json.dumps([c]),
    "quantization_config_str": lambda c: json.dumps({**c, "quantization_config": "x"}),
    "quantization_config_list": lambda c: json.dumps({**c, "quantization_config": ["llm_int8"]}),
    "bad_threshold": lambda c: json.dumps({**c, "quantization_config": {"quant_method": "llm_int8", "threshold": "x"}}),
    "negative_threshold": lambda c: json.dumps(
        {**c, "quantization_config": {"quant_method": "llm_int8", "threshold": -1}}
    ),
    "unknown_method": lambda c: json.dumps({**c, "quantization_config": {"quant_method": "gptq"}}),
    "method_not_a_name": lambda c: json.dumps({**c, "quantization_config": {"quant_method": 7}}),
    "bad_activation": lambda c: json.dumps(
        {**c, "quantization_config": {"quant_method": "llm_int8", "activation": "fp4"}}
    ),
}


@pytest.mark.parametrize("kind", sorted(CONFIG_CORRUPTIONS))
def test_corrupt_config_is_named_and_leaves_nothing(pristine, tmp_path, kind):
    root, reference = pristine
    folder = tmp_path / "model"
    shutil.copytree(root / "single", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(CONFIG_CORRUPTIONS[kind](config))
    before = _listing(tmp_path)
    with pytest.raises((CheckpointError, OSError, ValueError)) as exc:
        llm_int8.from_pretrained(folder, progress=False)
    assert "config" in str(exc.value) and str(folder) in str(exc.value), str(exc.value)
    assert _listing(tmp_path) == before


# ---- the CLI ---------------------------------------------------------------------------------------

# (subcommand, arguments that make it valid up to the option under test)
REQUIRED = {
    "demo": [],
    "generate": ["--prompt", "hi"],
    "eval": ["--text", "t.txt", "--json", "r.json"],
    "quantize": ["src", "out"],
    "outliers": ["--text", "t.txt", "--json", "r.json"],
}
POSITIVE_INT = {
    "demo": ["--max-new-tokens", "--max-tokens", "--window"],
    "generate": ["--max-new-tokens"],
    "eval": ["--max-tokens", "--window", "--limit"],
    "quantize": [],
    "outliers": ["--max-tokens", "--window", "--ablation-window"],
}
NONNEGATIVE_INT = {"eval": ["--skip-tasks"], "outliers": ["--ablation-tokens", "--random-draws"]}
THRESHOLD = {"demo": ["--threshold"], "generate": ["--threshold"], "quantize": ["--threshold"]}
OUTPUT_FILE = {"eval": ["--json", "--markdown", "--plot"], "outliers": ["--json", "--plot"]}
FRACTION = {"outliers": ["--min-layers", "--min-seq"]}


def _bad_value(kind: str):
    not_a_number = st.sampled_from(["", "x", "1e", "0x", "--", "one"])
    if kind == "positive_int":
        return st.one_of(st.integers(max_value=0).map(str), not_a_number, st.sampled_from(["1.5", "nan"]))
    if kind == "nonnegative_int":
        return st.one_of(st.integers(max_value=-1).map(str), not_a_number, st.sampled_from(["2.5", "inf"]))
    if kind == "threshold":
        return st.one_of(
            st.floats(max_value=-1e-9, allow_nan=False).map(repr), st.sampled_from(["nan", "inf", "-inf"]), not_a_number
        )
    if kind == "fraction":
        return st.one_of(st.floats(min_value=1.0001, allow_infinity=False).map(repr), st.sampled_from(["-0.5", "nan"]))
    raise ValueError(kind)


@st.composite
def bad_cli_calls(draw):
    command = draw(st.sampled_from(sorted(REQUIRED)))
    tables = {
        "positive_int": POSITIVE_INT,
        "nonnegative_int": NONNEGATIVE_INT,
        "threshold": THRESHOLD,
        "fraction": FRACTION,
        "output_file": OUTPUT_FILE,
        "activation": {c: ["--activation"] for c in ("demo", "generate", "quantize")},
        "unknown": {c: ["--frobnicate"] for c in REQUIRED},
    }
    kinds = [k for k, table in tables.items() if table.get(command)]
    kind = draw(st.sampled_from(kinds))
    option = draw(st.sampled_from(tables[kind][command]))
    if kind == "output_file":
        value = "{dir}"
    elif kind == "activation":
        value = draw(st.text(min_size=1, max_size=8).filter(lambda t: t not in ("absmax", "zeropoint")))
    elif kind == "unknown":
        value = "1"
    else:
        value = draw(_bad_value(kind))
    return [command, *REQUIRED[command], f"{option}={value}"]


@given(argv=bad_cli_calls())
@settings(max_examples=_examples(60), suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_subcommand_refuses_bad_arguments_in_one_line(argv, tmp_path, capsys):
    capsys.readouterr()  # one capture per example, not per test
    argv = [a.replace("{dir}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err, err


@pytest.mark.parametrize("command", sorted(c for c, required in REQUIRED.items() if required))
def test_every_subcommand_needs_its_required_arguments(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required" in err, err


def test_debug_shows_the_traceback(tmp_path, capsys):
    """One line without ``--debug``; with it, the traceback, as a user running the command sees it."""
    missing = tmp_path / "missing"
    missing.mkdir()  # a folder without config.json
    argv = ["quantize", str(missing), str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err and "Traceback" not in err
    code = "import sys; from llm_int8.cli import main; sys.exit(main())"
    debug = subprocess.run(
        [sys.executable, "-c", code, "--debug", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "config.json" in debug.stderr.strip().splitlines()[-1]
