"""Scoring HellaSwag tasks: the log-likelihood of each ending given the context.

``task_log_likelihoods`` runs the context once and the four endings on its key/value cache, and
asks the model for logits only where they are scored (the context's last position, then the
endings): about 2.3x faster than scoring each ending in full, on SmolLM2-135M with one thread. Each
task is one unit (nothing batched across tasks), so a task's scores depend on that task alone —
not on its neighbours, a shard boundary or a resumed run; that matters for int8 models, whose
outlier columns are chosen per forward call. ``batched_log_likelihoods`` is the plain computation
(every ending in full, right-padded, several tasks per batch), kept as the reference the fast path
is tested against.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from tqdm.auto import tqdm

from .hellaswag import N_ENDINGS, HellaSwagResult, HellaSwagTask

__all__ = ["batched_log_likelihoods", "choices", "ending_chars", "score_hellaswag", "task_log_likelihoods"]


def _encode(tokenizer, task: HellaSwagTask) -> list[tuple[list[int], int, int]]:
    """Per ending: (ids of context + continuation, number of context tokens, continuation length in chars).

    The continuation's tokens are those of ``tokenize(context + continuation)`` after the tokens of
    ``tokenize(context)``, so a merge across the boundary cannot shift tokens between the two; the
    first ``n_ctx`` ids are the context's for every ending.
    """
    ctx_ids = tokenizer(task.context, add_special_tokens=False)["input_ids"]
    out = []
    for ending in task.endings:
        cont = " " + ending
        ids = tokenizer(task.context + cont, add_special_tokens=False)["input_ids"]
        n_ctx = len(ctx_ids)
        if ids[:n_ctx] != ctx_ids:  # the boundary merged: fall back to separate encodings
            ids = ctx_ids + tokenizer(cont, add_special_tokens=False)["input_ids"]
        out.append((ids, n_ctx, len(cont)))
    return out


def _cache_kwarg(model) -> str:
    """The name under which this transformers version takes a key/value cache (``cache`` since 5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output):
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


@torch.no_grad()
def task_log_likelihoods(model, tokenizer, task: HellaSwagTask) -> tuple[float, ...]:
    """Summed log-likelihood (nats) of each ending's tokens given the context, context run once.

    Falls back to ``batched_log_likelihoods`` for a model without a key/value cache it can repeat.
    """
    encoded = _encode(tokenizer, task)
    n_ctx = encoded[0][1]
    conts = [ids[n_ctx:] for ids, _, _ in encoded]
    if n_ctx == 0 or any(not c for c in conts):
        return batched_log_likelihoods(model, tokenizer, [task])[0]
    device = next(model.parameters()).device
    ctx = torch.tensor([encoded[0][0][:n_ctx]], device=device)  # (1, n_ctx)
    kw = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out = model(input_ids=ctx, use_cache=True, **kw)
    cache = _returned_cache(out)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return batched_log_likelihoods(model, tokenizer, [task])[0]
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # (vocab,): predicts every ending's 1st token
    cache.batch_repeat_interleave(N_ENDINGS)
    width = max(len(c) for c in conts)
    ends = torch.zeros(N_ENDINGS, width, dtype=torch.long)  # (4, width), right-padded: causal, never seen
    for i, c in enumerate(conts):
        ends[i, : len(c)] = torch.tensor(c)
    logits = model(input_ids=ends.to(device), use_cache=False, **{_cache_kwarg(model): cache}).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (4, width - 1, vocab): predicts t+1
    token_ll = logprobs.gather(-1, ends[:, 1:, None].to(device)).squeeze(-1).double().cpu()  # (4, width - 1)
    return tuple(first[c[0]].item() + token_ll[i, : len(c) - 1].sum().item() for i, c in enumerate(conts))


@torch.no_grad()
def batched_log_likelihoods(model, tokenizer, tasks: list[HellaSwagTask]) -> list[tuple[float, ...]]:
    """The plain computation: every ending of ``tasks`` in full (context + ending), in one right-padded batch.

    Padding comes after every scored token, so a causal model's log-likelihoods do not depend on it.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [e for t in tasks for e in _encode(tokenizer, t)]  # 4 per task
    width = max(len(ids) for ids, _, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)  # (4 * tasks, width)
    attention = torch.zeros_like(input_ids)
    target = torch.zeros(len(encoded), width, dtype=torch.bool)  # which positions are scored
    for i, (ids, n_ctx, _) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        target[i, n_ctx : len(ids)] = True
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # (4 * tasks, width - 1, vocab): predicts t+1
    token_ll = logprobs.gather(-1, input_ids[:, 1:, None].to(device)).squeeze(-1)  # (4 * tasks, width - 1)
    ll = (token_ll * target[:, 1:].to(device)).sum(-1).double().cpu().view(len(tasks), N_ENDINGS)
    return [tuple(row.tolist()) for row in ll]


def ending_chars(task: HellaSwagTask) -> tuple[int, ...]:
    """Length in characters of each continuation ``" " + ending`` (acc_norm's normaliser)."""
    return tuple(len(" " + e) for e in task.endings)


def choices(task: HellaSwagTask, log_likelihoods: tuple[float, ...]) -> tuple[int, int]:
    """(acc choice, acc_norm choice): the ending with the highest sum, and per character."""
    norm = [ll / n for ll, n in zip(log_likelihoods, ending_chars(task), strict=True)]
    return (max(range(N_ENDINGS), key=log_likelihoods.__getitem__), max(range(N_ENDINGS), key=norm.__getitem__))


def score_hellaswag(
    model,
    tokenizer,
    tasks: list[HellaSwagTask],
    progress: bool = False,
    desc: str = "hellaswag",
    done: Mapping[int, tuple[float, ...]] | None = None,
    on_task: Callable[[HellaSwagTask, tuple[float, ...]], None] | None = None,
) -> HellaSwagResult:
    """acc and acc_norm of ``model`` on ``tasks``, one task at a time (``task_log_likelihoods``).

    ``done``: log-likelihoods already known, by ``task.index`` (a resumed run): those tasks are not
    scored again. ``on_task`` is called with each newly scored task and its log-likelihoods, as
    soon as it is scored (to write it away before the next one).
    """
    if not tasks:
        raise ValueError("no HellaSwag task to score")
    done = done or {}
    todo = sum(t.index not in done for t in tasks)
    bar = tqdm(total=todo, desc=desc, unit="task", disable=not progress or todo == 0)
    all_ll: list[tuple[float, ...]] = []
    for task in tasks:
        ll = done.get(task.index) if task.index is not None else None
        if ll is None:
            ll = task_log_likelihoods(model, tokenizer, task)
            if on_task is not None:
                on_task(task, ll)
            bar.update()
        all_ll.append(tuple(ll))
    bar.close()
    picks = [choices(t, ll) for t, ll in zip(tasks, all_ll, strict=True)]
    n = len(tasks)
    acc = sum(a == t.label for (a, _), t in zip(picks, tasks, strict=True)) / n
    acc_norm = sum(b == t.label for (_, b), t in zip(picks, tasks, strict=True)) / n
    return HellaSwagResult(acc, acc_norm, n, tuple(b for _, b in picks), tuple(all_ll))
