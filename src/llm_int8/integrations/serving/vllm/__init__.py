"""LLM.int8() as a vLLM quantization method (``--quantization llm_int8``), a thin adapter over ``llm_int8.ops``.

* ``plugin.py``: ``register``, run by vLLM in each of its processes (entry point ``vllm.general_plugins``).
* ``config.py``: the ``QuantizationConfig``: its options (``../options.py``) and which layers are int8.
* ``method.py``: the ``LinearMethodBase``: the int8 state of a layer, its derived copies and kernel
  choice ready at load, and ``apply``, one call of ``llm_int8.ops.int8_linear``.
* ``loading.py``: the weight loaders: a float shard quantized as it arrives, an int8 one checked.

vLLM owns the sharding (its own loaders narrow the codes and scales per rank), batching and the server.
Every module here imports vLLM; nothing outside this folder imports it.
"""
