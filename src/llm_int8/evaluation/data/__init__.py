"""Package data of ``llm_int8.evaluation``: the built-in chat prompts (``chat_prompts.jsonl``)."""
