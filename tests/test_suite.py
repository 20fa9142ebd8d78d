"""The suite's own guarantees: a hang fails the test that hangs, and no decision lands in the user's cache."""

from __future__ import annotations

import os
import tempfile

from llm_int8.ops.choice import cpu as cpu_choice


def test_every_test_has_a_timeout(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("timeout"), "pytest-timeout is missing: bash scripts/install.sh --dev"
    assert float(pytestconfig.getini("timeout")) > 0


def test_kernel_decisions_go_to_a_folder_of_this_session():
    folder = os.environ["LLM_INT8_CACHE_DIR"]
    assert folder.startswith(tempfile.gettempdir()) and cpu_choice.cache_path().is_relative_to(folder)
