"""Serving engines: LLM.int8() as a quantization method of vLLM (``vllm/``).

Nothing in ``llm_int8`` imports this package: vLLM loads ``vllm/plugin.py`` through the
``vllm.general_plugins`` entry point in every one of its processes, so the library itself never
needs vLLM. ``options.py`` (the method's settings, validated) imports no engine.
"""
