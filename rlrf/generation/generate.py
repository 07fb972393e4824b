"""`rlrf generate`: N sampled texts per user (or one per item) from the policy, resumable.

Modes (``generate.mode``, or ``--mode``):

* ``user_preference`` (RLRF4Rec) — N preference summaries per user, from the SAME history the
  reranker sees (the items before the list cut: ``RerankList.history``), never the future items
  the list is labelled from. Writes ``<run_dir>/iter_<t>/responses.jsonl``.
* ``item_knowledge`` (KAR) — one factual description per catalogue item (most popular first),
  greedy by default. Writes ``iter_<t>/item_knowledge.jsonl`` with ``"item"`` instead of ``"user"``.
* ``next_item`` (SPRec) — N next-title guesses per user from the items before the user's last
  item (the target, recorded as ``"target"``). Writes ``iter_<t>/next_item.jsonl``.

Each output file has a companion ``*.prompts.jsonl`` (one line per user/item: the exact prompt
text fed to the model and its hash) so later stages (pairs, DPO) reuse the prompt verbatim.

Records (docs/architecture.md): ``{"user", "iter", "k", "text", "n_tokens", "prompt_hash", "finished"}``
plus ``"flag"`` ("empty" or "repetitive") on degenerate outputs, which are kept, not dropped.
Sample k of user u in iteration t is seeded by (seed, mode, t, u, k) alone. Its bytes also depend
on the rows it is decoded with (bf16 decoding on the CPU is not batch-invariant;
bench/batch_invariance.py measures it), so a resumed run decodes each missing sample in the batch
the uninterrupted run planned for it, whole: with the same config, a kill at any point resumes to
the bytes of the uninterrupted run.

The stage by its sections (what a recipe calls; trl's scripts and torchtune's recipes hand each
step its own config section the same way)::

    policy = policy_for(cfg.llm, cfg.generate.backend)                      # the model
    prompts = make_prompts(cfg.generate, ds, policy.tokenizer, mode, users=..., max_history=...,
                           histories=visible_histories(ds, layout.lists, max_history))   # the data
    generate_texts(cfg.generate, prompts, policy, layout, mode=mode, iteration=t, seed=cfg.seed,
                   sampling=None, n=None)                                   # the run

`sampling` and `n` default to the section's (`sampling_for`); a greedy pass gives
``replace(sampling_for(gen, mode), temperature=0.0)`` and ``n=1``. `run_generate(cfg, ...)` is the
same stage behind the whole `RunConfig`, for the CLI.
"""


from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlrf.core.distributed import shard
from rlrf.core.errors import UserError
from rlrf.core.io import JsonlLog, atomic_write_json, read_jsonl
from rlrf.core.layout import RunLayout
from rlrf.core.records import ResponseRecord
from rlrf.core.progress import progress_bar
from rlrf.core.threads import use_threads
# Prompt, PromptBuilder and neutralise are re-exported: callers outside generation/ import them from here
from rlrf.generation.prompts import Prompt, PromptBuilder, neutralise  # noqa: F401
from rlrf.generation.sampling import SamplingParams

if TYPE_CHECKING:
    from rlrf.core.config import GenerateConfig, LLMConfig
    from rlrf.generation.policy import Policy

MODES = ("user_preference", "item_knowledge", "next_item")
KEY_FIELD = {"user_preference": "user", "item_knowledge": "item", "next_item": "user"}

Histories = Mapping[str, tuple[list[int], list[float | None]]]


# --------------------------------------------------------------------------------------------------
# which users / items, with which history


def select_users(ds, split: str = "all", max_users: int | None = None) -> list[str]:
    """Users of `split` ("all" or a split name, in split order), capped at the first `max_users`."""
    users = list(ds.users) if split == "all" else list(ds.splits[split])
    if max_users is not None:
        users = users[:max_users]
    return users


def visible_histories(ds, lists: Path | None, max_history: int) -> dict[str, tuple[list[int], list[float | None]]]:
    """Per user, the history the reranker sees: `RerankList.history` from the run's `lists` file
    (`RunLayout.lists`) when `rlrf data` wrote it, else the same KAR cut recomputed (`max_history`
    = `data.lists.max_history`). Stages that write into a sub-folder of a run (evaluation, export)
    pass the run's own lists file, so SASRec-sourced lists keep their own history."""
    from rlrf.data.lists import history_cut, load_lists

    if lists is not None and lists.exists():
        return {u: (lst.history, lst.history_ratings) for u, lst in load_lists(lists).items()}
    out = {}
    for uid, user in ds.users.items():
        cut = history_cut(len(user.items), max_history)
        out[uid] = (user.items[:cut], user.ratings[:cut])
    return out


def make_prompts(gen: GenerateConfig, ds, tokenizer, mode: str, *, users: Sequence[str] = (),
                 max_items: int | None = None, max_history: int = 30, histories: Histories | None = None) -> list[Prompt]:
    """Prompts of `mode`, shaped by the `generate:` section `gen` (templates: a bundled name or a
    .j2 path, else the domain's own set or the neutral default; max_prompt_tokens, domain, profile):
    for `users` in that order (user modes), or the `max_items` most popular items (all with None;
    item_knowledge). user_preference shows `histories` (default: the KAR cut
    at `max_history`); next_item the `max_history` items before the user's last one."""
    if mode not in MODES:
        raise UserError(f"generate.mode: unknown mode '{mode}' ({', '.join(MODES)})")
    builder = PromptBuilder(tokenizer, gen.templates.get(mode, mode), max_prompt_tokens=gen.max_prompt_tokens,
                            domain=gen.domain or "movies", key=f"generate.templates.{mode}")
    cat = ds.catalog
    prompts: list[Prompt] = []
    if mode == "item_knowledge":
        import numpy as np

        order = np.argsort(-np.asarray(cat.popularity), kind="stable")
        if max_items is not None:
            order = order[:max_items]
        return [builder.item_prompt(cat.ids[i], cat, i) for i in order.tolist()]
    if mode == "user_preference":
        hist = histories if histories is not None else visible_histories(ds, None, max_history)
        for u in users:
            if u not in hist or not hist[u][0]:
                continue
            items, ratings = hist[u]
            prompts.append(builder.history_prompt(u, cat, items, ratings, ds.users[u].profile if gen.profile else None))
    else:  # next_item
        for u in users:
            user = ds.users[u]
            if len(user.items) < 2:
                continue
            items = user.items[:-1][-max_history:]
            p = builder.history_prompt(u, cat, items, None, ds.users[u].profile if gen.profile else None)
            p.meta["target"] = cat.ids[user.items[-1]]
            prompts.append(p)
    return prompts


def build_prompts(cfg, ds, tokenizer, mode: str = "user_preference", lists_dir: Path | None = None,
                  users: Sequence[str] | None = None) -> list[Prompt]:
    """`make_prompts` for a whole `RunConfig`: `users` default to `generate.users` / `max_users`,
    histories come from the lists in `lists_dir` (default: the run directory)."""
    g = cfg.generate
    if mode not in MODES:
        raise UserError(f"generate.mode: unknown mode '{mode}' ({', '.join(MODES)})")
    max_history = cfg.data.lists.max_history
    if mode == "item_knowledge":
        return make_prompts(g, ds, tokenizer, mode, max_items=g.max_items)
    users = select_users(ds, g.users, g.max_users) if users is None else list(users)
    histories = None
    if mode == "user_preference":
        histories = visible_histories(ds, RunLayout(lists_dir or cfg.run_dir).lists, max_history)
    return make_prompts(g, ds, tokenizer, mode, users=users, max_history=max_history, histories=histories)


# --------------------------------------------------------------------------------------------------
# degenerate outputs


def flag_text(text: str) -> str | None:
    """'empty' for blank output, 'repetitive' for loops; None for an ordinary text."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    lines = [ln.strip().lower() for ln in stripped.splitlines() if len(ln.strip()) >= 8]
    if lines:
        top = max(lines.count(ln) for ln in set(lines))
        if top >= 3 and top / len(lines) >= 0.3:
            return "repetitive"
    words = re.sub(r"[^\w\s'-]", " ", stripped.lower()).split()
    if len(words) >= 12:
        grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        if len(set(grams)) / len(grams) < 0.5:
            return "repetitive"
    tail = words[-40:]
    if len(tail) >= 20 and len(set(tail)) / len(tail) < 0.25:  # a loop over a few words ("horror, crime, horror, ...")
        return "repetitive"
    return None


# --------------------------------------------------------------------------------------------------
# the stage


@dataclass
class GenerateResult:
    path: Path
    mode: str
    written: int
    skipped: int  # already present from an earlier (killed) run
    tokens: int
    seconds: float
    flagged: dict[str, int]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def sampling_for(gen: GenerateConfig, mode: str) -> SamplingParams:
    """The `generate:` section's sampling parameters for `mode` (item_knowledge: `item_temperature`)."""
    temperature = gen.item_temperature if mode == "item_knowledge" else gen.temperature
    return SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=temperature, top_p=gen.top_p, top_k=gen.top_k,
                          repetition_penalty=gen.repetition_penalty)


def policy_for(llm: LLMConfig, backend: str = "auto", *, adapter: Path | str | None = ...) -> Policy:
    """The policy an `llm:` section names, ready for `backend` (`adapter` as in `load_policy`: left
    out, `llm.adapter`): vLLM loads the weights itself, so it gets the policy's description only
    (one copy of the weights on the GPU)."""
    from rlrf.generation.backends import resolve_backend
    from rlrf.generation.policy import describe_policy, load_policy

    if resolve_backend(backend) == "vllm":
        return describe_policy(llm, adapter=adapter)
    return load_policy(llm, adapter=adapter)


def generate_texts(gen: GenerateConfig, prompts: Sequence[Prompt], policy: Policy, out: RunLayout, *, mode: str,
                   iteration: int, seed: int, sampling: SamplingParams | None = None, n: int | None = None,
                   backend: str | None = None, show_progress: bool = True, label: str | None = None) -> GenerateResult:
    """Generate what is missing from `out`'s output file of (`iteration`, `mode`) for `prompts`.

    `gen` is the `generate:` section: the engine (`backend`, `batch_size`) and, unless given,
    the sampling parameters (`sampling_for`) and `n` (1 for item_knowledge). Sample k of prompt p
    is seeded by (`seed`, mode, iteration, p.key, k); `label` names the work in progress lines
    (default: the mode and iteration)."""
    from rlrf.generation.backends import Request, make_backend, resolve_backend
    from rlrf.generation.sampling import sample_seed

    if mode not in MODES:
        raise UserError(f"generate.mode: unknown mode '{mode}' ({', '.join(MODES)})")
    out_path = out.responses(iteration, mode)
    key_field = KEY_FIELD[mode]
    # under torchrun / accelerate launch each process writes its share of the users into the same
    # files (appends are locked and keyed, so the shares merge into one file without duplicates)
    prompts = shard(list(prompts))
    if n is None:
        n = 1 if mode == "item_knowledge" else gen.n
    params = sampling if sampling is not None else sampling_for(gen, mode)

    prompt_log = JsonlLog(out.prompts(iteration, mode), key=lambda r: r[key_field])
    _check_prompts_unchanged(prompt_log, prompts, key_field)
    prompt_log.append({key_field: p.key, "iter": iteration, "prompt": p.text, "prompt_hash": p.hash, **p.meta} for p in prompts)
    log = JsonlLog(out_path, key=lambda r: (r[key_field], r["k"]))

    # every prompt's whole group is requested and the engine decodes the batches that hold a missing
    # sample exactly as an uninterrupted run planned them: a kill anywhere resumes to the same bytes
    requests = [Request(prompt_ids=p.ids, seeds=[sample_seed(seed, mode, iteration, p.key, k) for k in range(n)],
                        tags=list(range(n))) for p in prompts]
    missing = {(i, k) for i, p in enumerate(prompts) for k in range(n) if (p.key, k) not in log}
    skipped = len(prompts) * n - len(missing)
    engine = make_backend(resolve_backend(backend or gen.backend), policy, batch_size=gen.batch_size)
    tokenizer = policy.tokenizer

    flagged: dict[str, int] = {}
    written = tokens = 0
    start = time.perf_counter()
    progress = progress_bar(show_progress, unit="tok")
    with progress:
        task = progress.add_task(label or f"generate {mode} iter {iteration}", total=len(missing), tps=0.0)
        for batch in engine.generate(requests, params, wanted=missing) if missing else []:
            records = []
            for s in batch:
                tokens += len(s.token_ids) + int(s.finished)
                if (s.request, s.tag) not in missing:
                    continue  # written before the kill; decoded again only to keep its batch's shape
                p = prompts[s.request]
                text = tokenizer.decode(s.token_ids, skip_special_tokens=True).strip()
                flag = flag_text(text) or None
                if flag:
                    flagged[flag] = flagged.get(flag, 0) + 1
                records.append(ResponseRecord(**{key_field: p.key}, iter=iteration, k=s.tag, text=text,
                                              n_tokens=len(s.token_ids), prompt_hash=p.hash, finished=s.finished,
                                              target=p.meta.get("target"), flag=flag).to_dict())
            records.sort(key=lambda r: (str(r[key_field]), r["k"]))
            written += log.append(records)
            elapsed = time.perf_counter() - start
            progress.update(task, advance=len(records), tps=tokens / max(elapsed, 1e-9))
    seconds = time.perf_counter() - start
    result = GenerateResult(out_path, mode, written, skipped, tokens, seconds, flagged)
    atomic_write_json(out.responses_meta(iteration, mode), {
        "mode": mode, "iter": iteration, "model": policy.source,
        "adapter": str(policy.adapter) if policy.adapter else None, "backend": engine.name,
        "dtype": str(policy.dtype).replace("torch.", ""), "device": str(policy.device),
        "n": n, "params": params.described(), "batch_size": gen.batch_size,
        "prompts": len(prompts), "records": len(log.done), "last_run": {
            "written": written, "skipped": skipped, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(result.tokens_per_s, 2), "flagged": flagged},
    })
    return result


def run_generate(cfg, *, iteration: int = 0, mode: str | None = None, policy=None, dataset=None,
                 show_progress: bool = True, backend: str | None = None, lists_dir: Path | None = None,
                 users: Sequence[str] | None = None, label: str | None = None) -> GenerateResult:
    """The stage for a whole `RunConfig` (the CLI's `rlrf generate`): `generate_texts` over
    `build_prompts`, with the run's threads, dataset and policy (`llm:`) unless given.

    `lists_dir` holds the run's lists.jsonl (default cfg.run_dir; see `visible_histories`);
    `users` replaces the generate.users / generate.max_users selection (SPRec samples its own);
    `label` names the work in progress lines (default: the mode and iteration)."""
    from rlrf.data.dataset import load_dataset
    from rlrf.generation.backends import resolve_backend

    g = cfg.generate
    mode = mode or g.mode
    if mode not in MODES:
        raise UserError(f"generate.mode: unknown mode '{mode}' ({', '.join(MODES)})")
    use_threads(cfg)
    ds = dataset if dataset is not None else load_dataset(cfg.data, seed=cfg.seed)
    engine_name = resolve_backend(backend or g.backend)
    if policy is None:
        policy = policy_for(cfg.llm, engine_name)
    prompts = build_prompts(cfg, ds, policy.tokenizer, mode, lists_dir, users)
    return generate_texts(g, prompts, policy, RunLayout(cfg.run_dir), mode=mode, iteration=iteration, seed=cfg.seed,
                          backend=engine_name, show_progress=show_progress, label=label)


def _check_prompts_unchanged(prompt_log: JsonlLog, prompts: list[Prompt], key_field: str) -> None:
    """Resuming with different prompts (a changed template or config) would mix two experiments."""
    current = {p.key: p.hash for p in prompts}
    for record in read_jsonl(prompt_log.path):
        key = record[key_field]
        if key in current and record["prompt_hash"] != current[key]:
            raise UserError(
                f"{prompt_log.path}: the prompt for {key_field} {key} changed since this file was written "
                "(template or config edited); use a new run_dir or iteration"
            )


def load_responses(run_dir: Path, iteration: int, mode: str = "user_preference") -> list[dict]:
    """All records of one iteration's output (for the score stage)."""
    return read_jsonl(RunLayout(run_dir).responses(iteration, mode))


def load_prompts(run_dir: Path, iteration: int, mode: str = "user_preference") -> dict[str, dict]:
    """key -> {"prompt", "prompt_hash", ...}: the exact prompt texts used (for pairs / DPO)."""
    return {r[KEY_FIELD[mode]]: r for r in read_jsonl(RunLayout(run_dir).prompts(iteration, mode))}

