"""The vLLM method's options (``integrations/serving/options.py``): read without vLLM, so they run in every suite.

Also: ``import llm_int8`` never imports vLLM, and the plugin is declared where vLLM looks for it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm_int8.integrations.serving.options import KNOWN_OPTIONS, ServingOptions

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_library_defaults():
    opts = ServingOptions.from_config(None)
    assert (opts.threshold, opts.activation, opts.skip, opts.pre_quantized) == (6.0, "zeropoint", ("lm_head",), False)


def test_a_saved_folder_config_reads_as_pre_quantized():
    saved = {
        "quant_method": "llm_int8", "threshold": 3.0, "activation": "absmax", "skip_modules": None,
        "modules_to_not_convert": ["lm_head", "model.layers.0.self_attn.v_proj"], "format_version": 2,
    }  # fmt: skip
    opts = ServingOptions.from_config(saved)
    assert opts.pre_quantized and opts.threshold == 3.0 and opts.activation == "absmax"
    assert opts.skips(["model.layers.0.self_attn.v_proj"]) and not opts.skips(["model.layers.1.self_attn.v_proj"])


def test_skip_modules_match_on_name_boundaries():
    opts = ServingOptions.from_config({"skip_modules": "down_proj"})  # one name, not its characters
    assert opts.skip == ("lm_head", "down_proj")
    assert opts.skips(["model.layers.3.mlp.down_proj"]) and not opts.skips(["model.layers.3.mlp.xdown_proj"])
    assert opts.skips(["a.gate_proj", "a.up_proj"]) is False


@pytest.mark.parametrize(
    "config, message",
    [
        ({"treshold": 3.0}, r"unknown option\(s\) 'treshold'"),
        ({"threshold": -1.0}, "threshold must be a finite number >= 0"),
        ({"threshold": float("inf")}, "threshold must be a finite number >= 0"),
        ({"threshold": "6"}, "threshold must be a number"),
        ({"activation": "minmax"}, "activation must be one of"),
        ({"quant_method": "bitsandbytes"}, "quant_method is 'bitsandbytes'"),
        ({"float_dims": {"model.layers.0.mlp.down_proj": [3]}}, "float_dims .* not supported by the vLLM method"),
        ({"skip_modules": [1]}, "skip_modules must be a list of module names"),
        ({"skip_output_layer": False}, "skip_output_layer must be true"),
    ],
    ids=["unknown", "negative", "inf", "string", "activation", "method", "float_dims", "names", "output_layer"],
)
def test_bad_options_are_errors_naming_them(config, message):
    with pytest.raises(ValueError, match=message):
        ServingOptions.from_config(config)


def test_every_known_option_is_documented():
    doc = (REPO / "docs" / "serving.md").read_text()
    assert all(f"`{name}`" in doc for name in KNOWN_OPTIONS)


def test_importing_the_library_never_imports_vllm():
    code = "import sys, llm_int8, llm_int8.integrations.serving.options; print('vllm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip() == "False"


def test_the_plugin_is_an_entry_point_vllm_loads():
    text = (REPO / "pyproject.toml").read_text()
    section = text.split('[project.entry-points."vllm.general_plugins"]', 1)[1].split("\n[", 1)[0]
    target = section.split("llm_int8 = ", 1)[1].split("\n", 1)[0].strip('"')
    module, _, func = target.partition(":")
    assert module == "llm_int8.integrations.serving.vllm.plugin" and func == "register"
    assert (REPO / "src" / Path(*module.split("."))).with_suffix(".py").is_file()
