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

Records (docs/architecture.md): ``{"user", "iter", "k", "text", "n_tokens", "prompt_hash", "finished"}`` plus
``"flag"`` ("empty" or "repetitive") on degenerate outputs, which are kept, not dropped.
Sample k of user u in iteration t is seeded by (seed, mode, t, u, k) alone, so rerunning after a
kill, or with another batch size, reproduces it.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlrf.core.errors import UserError
from rlrf.core.resources import prompts_dir
from rlrf.core.io import JsonlLog, atomic_write_json, read_jsonl
from rlrf.core.layout import RunLayout
from rlrf.core.distributed import shard
from rlrf.core.progress import progress_bar
from rlrf.core.threads import use_threads

MODES = ("user_preference", "item_knowledge", "next_item")
KEY_FIELD = {"user_preference": "user", "item_knowledge": "item", "next_item": "user"}

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
_SPECIAL_LIKE = re.compile(r"<\|[^|<>]{0,40}\|>")
_ZWSP = "\u200b"


# --------------------------------------------------------------------------------------------------
# prompts


def neutralise(text: str, special_tokens: Sequence[str] = (), max_chars: int = 300) -> str:
    """Make a data string safe to place in a prompt.

    Control characters and newlines become spaces (a title cannot start a new prompt line), and
    every special-token string (``<|im_start|>``, any ``<|...|>``, the tokenizer's added tokens)
    gets a zero-width space after its first character, so the tokenizer reads plain text instead
    of a control token. Template syntax needs no escaping: values are never re-parsed by Jinja.
    """
    text = _CONTROL.sub(" ", str(text))
    for tok in sorted(special_tokens, key=len, reverse=True):
        if tok and tok in text:
            text = text.replace(tok, tok[0] + _ZWSP + tok[1:])
    text = _SPECIAL_LIKE.sub(lambda m: m.group(0)[0] + _ZWSP + m.group(0)[1:], text)
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return text


def _format_rating(r: float | None) -> str | None:
    if r is None:
        return None
    return str(int(r)) if float(r).is_integer() else f"{r:g}"


@dataclass
class Prompt:
    key: str  # user id or item id
    text: str  # exactly what is tokenised (chat template applied)
    ids: list[int]
    meta: dict = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


class PromptBuilder:
    """Renders a prompts/*.j2 template through the tokenizer's chat template, within a token budget."""

    def __init__(self, tokenizer, template: str, *, max_prompt_tokens: int = 512, domain: str = "movies",
                 templates_dir: Path | None = None):
        import jinja2

        self.tokenizer = tokenizer
        self.budget = max_prompt_tokens
        self.domain = domain
        folder = Path(templates_dir) if templates_dir else prompts_dir()
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(folder)),
            autoescape=False,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        name = template if template.endswith(".j2") else f"{template}.j2"
        try:
            self.template = env.get_template(name)
        except jinja2.TemplateNotFound:
            raise UserError(f"{folder / name}: prompt template not found") from None
        except jinja2.TemplateSyntaxError as err:
            raise UserError(f"{folder / name}: line {err.lineno}: {err.message}") from None
        specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
        for added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
            specials.add(getattr(added, "content", str(added)))
        self.special_tokens = sorted(t for t in specials if t)

    def safe(self, text: Any) -> str:
        return neutralise(text, self.special_tokens)

    def _item_vars(self, catalog, i: int, rating: float | None = None) -> dict:
        return {
            "text": self.safe(catalog.describe(i)),
            "title": self.safe(catalog.titles[i]),
            "year": catalog.years[i],
            "genres": [self.safe(g) for g in catalog.genres[i]],
            "rating": _format_rating(rating),
        }

    def render(self, **variables) -> str:
        """The chat-formatted prompt text for one set of template variables."""
        import jinja2

        variables.setdefault("domain", self.domain)
        try:
            module = self.template.make_module(variables)
        except jinja2.UndefinedError as err:
            raise UserError(f"{self.template.filename}: {err.message}") from None
        user = str(module).strip()
        system = str(getattr(module, "system", "") or "").strip()
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return (system + "\n\n" if system else "") + user + "\n\n"

    def encode(self, text: str) -> list[int]:
        chat = bool(getattr(self.tokenizer, "chat_template", None))
        return list(self.tokenizer(text, add_special_tokens=not chat)["input_ids"])

    def history_prompt(self, key: str, catalog, history: Sequence[int], ratings: Sequence[float | None] | None = None,
                       profile: dict | None = None, **extra) -> Prompt:
        """A prompt over a history (oldest first), keeping the NEWEST items that fit the budget."""
        ratings = list(ratings) if ratings is not None else [None] * len(history)
        items = [self._item_vars(catalog, i, r) for i, r in zip(history, ratings)]
        base = {
            "profile": {self.safe(k): self.safe(v) for k, v in (profile or {}).items()},
            "has_ratings": any(r is not None for r in ratings),
            "rating_scale": 5,
            **extra,
        }

        def build(n_keep: int) -> tuple[str, list[int]]:
            kept = items[len(items) - n_keep:] if n_keep else []
            text = self.render(history=kept, n_omitted=len(items) - n_keep, **base)
            return text, self.encode(text)

        lo, hi = 1, len(items)  # keep at least one item even if it alone exceeds the budget
        text, ids = build(hi)
        if len(ids) > self.budget and hi > 1:
            best = None
            while lo <= hi:  # largest n_keep that fits (token count grows with n_keep)
                mid = (lo + hi) // 2
                t, i = build(mid)
                if len(i) <= self.budget:
                    best, lo = (mid, t, i), mid + 1
                else:
                    hi = mid - 1
            n_keep, text, ids = best if best else (1, *build(1))
        else:
            n_keep = len(items)
        return Prompt(key, text, ids, {"n_history": n_keep, "n_omitted": len(items) - n_keep})

    def item_prompt(self, key: str, catalog, i: int) -> Prompt:
        text = self.render(item=self._item_vars(catalog, i))
        return Prompt(key, text, self.encode(text), {})


# --------------------------------------------------------------------------------------------------
# which users / items, with which history


def select_users(ds, cfg) -> list[str]:
    """Users of `generate.users` split (in split order), capped at `generate.max_users`."""
    g = cfg.generate
    users = list(ds.users) if g.users == "all" else list(ds.splits[g.users])
    if g.max_users is not None:
        users = users[: g.max_users]
    return users


def visible_histories(ds, cfg, lists_dir: Path | None = None) -> dict[str, tuple[list[int], list[float | None]]]:
    """Per user, the history the reranker sees: `RerankList.history` from `lists.jsonl` in
    `lists_dir` (default: the run directory) when `rlrf data` wrote it, else the same KAR cut
    recomputed (`data.history_cut`). Stages that write into a sub-folder of a run (evaluation,
    export) pass the run directory, so SASRec-sourced lists keep their own history."""
    from rlrf.data.lists import history_cut, load_lists

    path = RunLayout(lists_dir or cfg.run_dir).lists
    if path.exists():
        lists = load_lists(path)
        return {u: (lst.history, lst.history_ratings) for u, lst in lists.items()}
    out = {}
    for uid, user in ds.users.items():
        cut = history_cut(len(user.items), cfg.data.lists.max_history)
        out[uid] = (user.items[:cut], user.ratings[:cut])
    return out


def build_prompts(cfg, ds, tokenizer, mode: str = "user_preference", lists_dir: Path | None = None,
                  users: Sequence[str] | None = None) -> list[Prompt]:
    """Prompts of `mode` for `users` (default: `select_users`), in that order."""
    g = cfg.generate
    builder = PromptBuilder(tokenizer, g.templates.get(mode, mode), max_prompt_tokens=g.max_prompt_tokens, domain=g.domain)
    cat = ds.catalog
    prompts: list[Prompt] = []
    if mode == "item_knowledge":
        import numpy as np

        order = np.argsort(-np.asarray(cat.popularity), kind="stable")
        if g.max_items is not None:
            order = order[: g.max_items]
        for i in order.tolist():
            prompts.append(builder.item_prompt(cat.ids[i], cat, i))
        return prompts
    users = select_users(ds, cfg) if users is None else list(users)
    if mode == "user_preference":
        hist = visible_histories(ds, cfg, lists_dir)
        for u in users:
            if u not in hist or not hist[u][0]:
                continue
            items, ratings = hist[u]
            prompts.append(builder.history_prompt(u, cat, items, ratings, ds.users[u].profile if g.profile else None))
    elif mode == "next_item":
        for u in users:
            user = ds.users[u]
            if len(user.items) < 2:
                continue
            items = user.items[:-1][-cfg.data.lists.max_history:]
            p = builder.history_prompt(u, cat, items, None, ds.users[u].profile if g.profile else None)
            p.meta["target"] = cat.ids[user.items[-1]]
            prompts.append(p)
    else:
        raise UserError(f"generate.mode: unknown mode '{mode}' ({', '.join(MODES)})")
    return prompts


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


def sampling_params(cfg, mode: str):
    from rlrf.generation.backends import SamplingParams

    g = cfg.generate
    temperature = g.item_temperature if mode == "item_knowledge" else g.temperature
    return SamplingParams(max_new_tokens=g.max_new_tokens, temperature=temperature, top_p=g.top_p, top_k=g.top_k)


def run_generate(cfg, *, iteration: int = 0, mode: str | None = None, policy=None, dataset=None,
                 show_progress: bool = True, backend: str | None = None, lists_dir: Path | None = None,
                 users: Sequence[str] | None = None, label: str | None = None) -> GenerateResult:
    """Generate what is missing from this iteration's output file; returns what was done.

    `lists_dir` holds the run's lists.jsonl (default cfg.run_dir; see `visible_histories`);
    `users` replaces the generate.users / generate.max_users selection (SPRec samples its own);
    `label` names the work in progress lines (default: the mode and iteration)."""
    from rlrf.generation.backends import Request, make_backend, resolve_backend, sample_seed
    from rlrf.data.dataset import load_dataset
    from rlrf.generation.policy import describe_policy, load_policy

    g = cfg.generate
    mode = mode or g.mode
    if mode not in MODES:
        raise UserError(f"generate.mode: unknown mode '{mode}' ({', '.join(MODES)})")
    use_threads(cfg)
    layout = RunLayout(cfg.run_dir)
    out_path = layout.responses(iteration, mode)
    key_field = KEY_FIELD[mode]

    ds = dataset if dataset is not None else load_dataset(cfg.data, seed=cfg.seed)
    engine_name = resolve_backend(backend or g.backend)
    if policy is None:  # vLLM loads the weights itself: give it the policy's description only
        policy = describe_policy(cfg.llm) if engine_name == "vllm" else load_policy(cfg.llm)
    # under torchrun / accelerate launch each process writes its share of the users into the same
    # files (appends are locked and keyed, so the shares merge into one file without duplicates)
    prompts = shard(build_prompts(cfg, ds, policy.tokenizer, mode, lists_dir, users))
    n = 1 if mode == "item_knowledge" else g.n

    prompt_log = JsonlLog(layout.prompts(iteration, mode), key=lambda r: r[key_field])
    _check_prompts_unchanged(prompt_log, prompts, key_field)
    prompt_log.append({key_field: p.key, "iter": iteration, "prompt": p.text, "prompt_hash": p.hash, **p.meta} for p in prompts)
    log = JsonlLog(out_path, key=lambda r: (r[key_field], r["k"]))

    requests, owners = [], []
    skipped = 0
    for p in prompts:
        ks = [k for k in range(n) if (p.key, k) not in log]
        skipped += n - len(ks)
        if ks:
            seeds = [sample_seed(cfg.seed, mode, iteration, p.key, k) for k in ks]
            requests.append(Request(prompt_ids=p.ids, seeds=seeds, tags=ks))
            owners.append(p)
    total = sum(len(r.seeds) for r in requests)
    params = sampling_params(cfg, mode)
    engine = make_backend(engine_name, policy, batch_size=g.batch_size)
    tokenizer = policy.tokenizer

    flagged: dict[str, int] = {}
    written = tokens = 0
    start = time.perf_counter()
    progress = progress_bar(show_progress, unit="tok")
    with progress:
        task = progress.add_task(label or f"generate {mode} iter {iteration}", total=total, tps=0.0)
        for batch in engine.generate(requests, params) if requests else []:
            records = []
            for s in batch:
                p = owners[s.request]
                text = tokenizer.decode(s.token_ids, skip_special_tokens=True).strip()
                record = {key_field: p.key, "iter": iteration, "k": s.tag, "text": text,
                          "n_tokens": len(s.token_ids), "prompt_hash": p.hash, "finished": s.finished}
                if "target" in p.meta:
                    record["target"] = p.meta["target"]
                flag = flag_text(text)
                if flag:
                    record["flag"] = flag
                    flagged[flag] = flagged.get(flag, 0) + 1
                records.append(record)
                tokens += len(s.token_ids) + int(s.finished)
            records.sort(key=lambda r: (str(r[key_field]), r["k"]))
            written += log.append(records)
            elapsed = time.perf_counter() - start
            progress.update(task, advance=len(batch), tps=tokens / max(elapsed, 1e-9))
    seconds = time.perf_counter() - start
    result = GenerateResult(out_path, mode, written, skipped, tokens, seconds, flagged)
    atomic_write_json(layout.responses_meta(iteration, mode), {
        "mode": mode, "iter": iteration, "model": policy.source,
        "adapter": str(policy.adapter) if policy.adapter else None, "backend": engine.name,
        "dtype": str(policy.dtype).replace("torch.", ""), "device": str(policy.device),
        "n": n, "params": params.__dict__, "batch_size": g.batch_size,
        "prompts": len(prompts), "records": len(log.done), "last_run": {
            "written": written, "skipped": skipped, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(result.tokens_per_s, 2), "flagged": flagged},
    })
    return result


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

