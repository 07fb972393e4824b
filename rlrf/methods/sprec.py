"""SPRec on the shared loop: the policy writes the next item's title; its own wrong guesses are DPO negatives.

SFT and DPO on random negatives both learn the popularity bias of the data: a model that names the
blockbusters is rarely far wrong. Self-play makes the policy's own favourite answers the negatives
of the next round, so what it over-recommends is pushed down while SFT on real next items keeps it
accurate. The baselines run the same loop with random or popularity-sampled catalogue negatives.

Each arm is a `Method` on the one loop (`rlrf.methods.loop.run_loop`): its `prepare` is the SFT
shared by all arms (run once, found done by the others), and its negatives come from a sampler of
`SAMPLERS` (self-play, uniform, popularity). `rlrf sprec` runs every arm of `sprec.methods`, then
`collect` gathers their records into the run's metrics.json for the report.

Faithful to SPRec's method: the self-play negative is the current policy's GREEDY answer, and the
rejected text is what the policy wrote (not a catalogue title); grounding only drops a guess that
names the target (by item or by normalised title, so the target's twin title counts too). Every arm
makes exactly one pair per iteration user: a user whose greedy guess is the target (or empty) gets
the first usable of `sprec.samples` titles sampled from the policy, and, if none is usable, a
uniform catalogue item (counted as "catalogue" in pairs.meta.json). Popularity (DPO-popularity
sampling, grounding's tie-break, every reported mean popularity) counts TRAINING users'
interactions only (`train_popularity`).

The initial SFT sees sliding windows: for each train user, (the `max_history` items before position
t → item t) at its last `sprec.sft_windows` positions, capped at `sprec.sft_max_examples`. With
`sprec.sft_until_better` it runs one epoch at a time until the SFT policy's HR@K on VALID users is
strictly above the base policy's, or `sprec.sft_max_epochs` (`SPRec._sft_until_better`).

Run layout (``<run_dir>``, or ``<run_dir>/seed_<s>`` per training seed with `sprec.seeds`; paths from
`rlrf.core.layout.RunLayout`)::

    sft/adapter, sft/adapter_log.json    SFT on train users' sliding windows (policy_0 of every method)
    sft/epoch_<e>/adapter                sft_until_better: the adapter after each epoch (sft/adapter = the chosen one)
    valid/<policy>/eval.json             sft_until_better: each epoch's (and, in the run root, the base's) valid HR
    <method>/iter_<t>/next_item.jsonl    self-play's greedy predictions (k=0) and their .meta.json (sprec only)
    <method>/fallback/iter_<t>/...       the sampled fallback answers, a sub-run with its own .meta.json
    <method>/iter_<t>/pairs.jsonl        real next item vs negatives (policy texts / sampled items)
    <method>/iter_<t>/sft_adapter        SFT on the iteration's fresh positives, continuing the one LoRA
    <method>/iter_<t>/adapter            then DPO on the pairs, reference = that SFT'd policy
    <method>/metrics.json                the loop's record (rlrf.methods.loop.run_loop)
    eval/<policy>/                       held-out users' generations and eval.json (with per-user hits)
    metrics.json, report.md, *.png       every method side by side, pooled over seeds, paired CIs vs SFT
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_directory, atomic_write_json, atomic_write_jsonl, read_json
from rlrf.core.layout import RunLayout, adapter_complete
from rlrf.methods.loop import Method, with_adapter


def answer_text(catalog, i: int) -> str:
    """The completion the policy is taught for item i: "Title (year)", as the prompt asks (and as grounding embeds it)."""
    from rlrf.generation.grounding import catalogue_text

    return catalogue_text(catalog.titles[i], catalog.years[i])


def _rng(seed: int, *parts) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def train_popularity(ds) -> np.ndarray:
    """Interactions per catalogue item over TRAINING users only (valid/test users' items never count):
    the popularity behind DPO-popularity sampling, grounding's tie-break and every reported mean."""
    counts = np.zeros(len(ds.catalog), dtype=np.int64)
    for u in ds.splits["train"]:
        np.add.at(counts, np.asarray(ds.users[u].items, dtype=np.int64), 1)
    return counts


def eligible_train_users(ds) -> list[str]:
    return [u for u in ds.splits["train"] if len(ds.users[u].items) >= 2]


def iteration_users(ds, cfg, iteration: int) -> list[str]:
    """Train users sampled afresh for iteration t (same for every method, so they compare fairly)."""
    users = eligible_train_users(ds)
    n = min(cfg.sprec.users_per_iteration, len(users))
    picked = _rng(cfg.seed, "iteration", iteration).choice(len(users), size=n, replace=False)
    return [users[i] for i in sorted(picked)]


def sft_users(ds, cfg) -> list[str]:
    users = eligible_train_users(ds)
    if cfg.sft.users is None or cfg.sft.users >= len(users):
        return users
    picked = _rng(cfg.seed, "sft").choice(len(users), size=cfg.sft.users, replace=False)
    return [users[i] for i in sorted(picked)]


def next_item_prompts(cfg, ds, tokenizer, users) -> list:
    """Prompts over each user's items before the last one; `meta["target"]` = the last item's id."""
    from rlrf.generation.generate import build_prompts

    return build_prompts(cfg, ds, tokenizer, "next_item", users=users)


# --------------------------------------------------------------------------------------------- SFT


def sft_records(cfg, ds, tokenizer, users) -> list[dict]:
    """One example per user: its last item after the items before it (an iteration's fresh positives)."""
    cat = ds.catalog
    return [{"prompt": p.text, "completion": answer_text(cat, cat.index(p.meta["target"]))}
            for p in next_item_prompts(cfg, ds, tokenizer, users)]


def sft_windows(ds, cfg, users) -> list[tuple[str, int]]:
    """(user, t): predict item t from the items before it, at each user's last `sprec.sft_windows`
    positions (t >= 1); a seeded sample of `sprec.sft_max_examples` when there are more."""
    out = []
    for u in users:
        n = len(ds.users[u].items)
        out += [(u, t) for t in range(max(1, n - cfg.sprec.sft_windows), n)]
    cap = cfg.sprec.sft_max_examples
    if cap is not None and len(out) > cap:
        picked = _rng(cfg.seed, "sft_windows").choice(len(out), size=cap, replace=False)
        out = [out[i] for i in sorted(picked)]
    return out


def window_records(cfg, ds, tokenizer, windows) -> list[dict]:
    """SFT records of sliding windows: the prompt shows the `data.lists.max_history` items before t
    (the same template as generation; the window at the last position is the generation prompt)."""
    from rlrf.generation.generate import PromptBuilder

    g = cfg.generate
    builder = PromptBuilder(tokenizer, g.templates.get("next_item", "next_item"), max_prompt_tokens=g.max_prompt_tokens,
                            domain=g.domain)
    cat = ds.catalog
    records = []
    for u, t in windows:
        user = ds.users[u]
        p = builder.history_prompt(u, cat, user.items[:t][-cfg.data.lists.max_history:], None,
                                   user.profile if g.profile else None)
        records.append({"prompt": p.text, "completion": answer_text(cat, user.items[t])})
    return records


# --------------------------------------------------------------------------------------- negatives


@dataclass(frozen=True)
class Negative:
    """One rejected answer: its text (the policy's own words for self-play), the catalogue item it
    names when known (popularity statistics, RosePO's margin) and where it came from."""

    text: str
    item: int | None
    source: str  # greedy | sampled | catalogue (self-play fallback) | random | popularity


def usable_guess(grounder, text: str, grounding, target: int) -> bool:
    """A policy answer can be a negative unless it is empty or names the target: grounded to the
    target or its twin, or its normalised title equals the target's."""
    from rlrf.generation.grounding import extract_title

    if not extract_title(text or ""):
        return False
    if grounding.item is not None and grounder.same_title(grounding.item, target):
        return False
    return not grounder.names_item(text, target)


def self_play_negatives(grounder, target: int, candidates, k: int) -> list[Negative]:
    """Up to k usable, distinct (by normalised title) policy answers, in order: `candidates` are
    (k, text, grounding) with k=0 the greedy answer and k>=1 sampled fallbacks."""
    from rlrf.generation.grounding import extract_title, normalise_title

    out, seen = [], set()
    for kk, text, g in candidates:
        if not usable_guess(grounder, text, g, target):
            continue
        key = normalise_title(extract_title(text))[0] or text.strip()
        if key in seen:
            continue
        seen.add(key)
        out.append(Negative(text.strip(), g.item, "greedy" if kk == 0 else "sampled"))
    return out[:k]


def sampled_negatives(rng: np.random.Generator, n_items: int, k: int, exclude: set[int],
                      popularity: np.ndarray | None = None) -> list[int]:
    """k distinct catalogue items outside `exclude`, uniformly or in proportion to popularity."""
    weights = np.ones(n_items) if popularity is None else np.asarray(popularity, dtype=np.float64) + 1e-9
    weights = weights.copy()
    weights[list(exclude)] = 0.0
    k = min(k, int((weights > 0).sum()))
    return rng.choice(n_items, size=k, replace=False, p=weights / weights.sum()).tolist() if k else []


@dataclass(frozen=True)
class Sampler:
    """Where an arm's negatives come from: the policy's own predictions (`from_policy`: the arm
    generates them each iteration), or catalogue items drawn uniformly or by popularity."""

    title: str
    from_policy: bool = False
    by_popularity: bool = False


SAMPLERS = {
    "sprec": Sampler("SPRec", from_policy=True),
    "dpo_random": Sampler("DPO-random"),
    "dpo_popularity": Sampler("DPO-popularity", by_popularity=True),
}


def build_pairs(ds, prompts, negatives: dict[str, list[Negative]], similarity=None, iteration: int = 0) -> list[dict]:
    """Pairs in the align stage's format: chosen = the real next item, rejected = the negatives' texts.

    `margin` (RosePO's oracle) = 1 − cos(target, first negative's item) when `similarity` is given and
    that item is known: a negative that reads like the target is a less certain "worse" answer.
    """
    cat = ds.catalog
    pairs = []
    for p in prompts:
        negs = negatives.get(p.key, [])
        if not negs:
            continue
        target = cat.index(p.meta["target"])
        chosen = answer_text(cat, target)
        texts = [n.text for n in negs]
        if any(n.item == target for n in negs) or chosen in texts:
            raise AssertionError(f"user {p.key}: the target was drawn as its own negative")
        first = negs[0].item
        margin = 1.0 - float(similarity(target, first)) if similarity is not None and first is not None else 1.0
        pairs.append({"user": p.key, "iter": iteration, "prompt": p.text, "chosen": chosen,
                      "rejected": texts[0], "rejected_list": texts, "rejected_sources": [n.source for n in negs],
                      "margin": round(max(margin, 1e-6), 6)})
    return pairs


# --------------------------------------------------------------------------------------- the method


class SPRec(Method):
    """One arm of `rlrf sprec`: SFT'd policy, then each iteration SFT on fresh positives + DPO against
    the negatives of `SAMPLERS[name]` (self-play for "sprec", catalogue samples for the baselines).

    `root` is the arm's comparison folder (the run, or its seed_<s>); `base_root` holds the base
    policy's evaluation, shared by every seed; `label` names the arm in the loop's log and records.
    """

    def __init__(self, name: str, root: Path, dataset, grounder, show_progress: bool = True, *,
                 popularity: np.ndarray | None = None, base_root: Path | None = None, label: str | None = None):
        if name not in SAMPLERS:
            raise UserError(f"sprec.methods: unknown method '{name}' ({', '.join(SAMPLERS)})")
        self.name, self.sampler_name, self.sampler = label or name, name, SAMPLERS[name]
        self.root, self.ds, self.grounder = RunLayout(root), dataset, grounder
        self.base_root = Path(base_root) if base_root is not None else self.root.root
        self.popularity = np.asarray(popularity) if popularity is not None else train_popularity(dataset)
        self.show_progress = show_progress
        self._tokenizer = None

    def tokenizer(self, cfg):
        if self._tokenizer is None:
            from rlrf.generation.policy import policy_tokenizer

            self._tokenizer = policy_tokenizer(cfg.llm)
        return self._tokenizer

    def prepare(self, cfg) -> Path:
        """The base policy's evaluation (a reference row) and the sliding-window SFT every arm starts
        from; each is done once for the whole comparison and found done by the other arms."""
        from rlrf.alignment.sft import run_sft
        from rlrf.core.config import save_config

        root_cfg = cfg.model_copy(update={"run_dir": self.root.root})
        save_config(root_cfg, self.root.config)
        if cfg.sprec.evaluate_base:
            evaluate_policy(with_adapter(root_cfg, None), self.base_root, self.ds, self.grounder, self.show_progress,
                            self.popularity)
        if not adapter_complete(self.root.sft):
            records = window_records(cfg, self.ds, self.tokenizer(cfg), sft_windows(self.ds, cfg, sft_users(self.ds, cfg)))
            if cfg.sprec.sft_until_better:
                self._sft_until_better(cfg, records)
            else:
                run_sft(cfg, records, cfg.llm.adapter, self.root.sft, self.root.sft_log, self.show_progress)
        return self.root.sft

    def _sft_until_better(self, cfg, records: list[dict]) -> dict:
        """SPRec's initial SFT "until validation HR beats the base model": epoch e continues epoch e−1's
        adapter for one more pass over `records`, then HR@K of its greedy answers on VALID users
        (`validation_config`) is compared with the base policy's; the first epoch strictly above the
        base, or epoch `sprec.sft_max_epochs`, becomes `sft/adapter`. Returns the log's summary.

        Why one `run_sft` per epoch rather than a TrainerCallback that evaluates at epoch end: an
        epoch's adapter is then a finished policy on disk, so the validation is the same
        `evaluate_policy` (generation, grounding, cache) as every other policy's, and a killed run
        skips each finished epoch (its adapter is complete, its validation cached) instead of
        resuming a trainer whose stopping state lives in memory. What it costs: each epoch is its own
        trainer, so the learning-rate schedule (warmup, linear decay) and AdamW's moments restart every
        epoch. Epoch e shuffles with `data_seed` + e − 1, so the epochs see different orders, as one
        multi-epoch run would; `sft.trainer_args.num_train_epochs` is replaced by 1.
        """
        from rlrf.alignment.sft import run_sft

        s = cfg.sprec
        vcfg = validation_config(cfg)
        key = f"hr@{vcfg.sprec.ks[0]}"
        users = evaluation_users(self.ds, vcfg)
        if not users:
            raise UserError("sprec.sft_until_better: no valid user with two or more items to judge the SFT on")
        base = evaluate_policy(with_adapter(vcfg, None), self.base_root, self.ds, self.grounder, self.show_progress,
                               self.popularity, out=RunLayout(self.base_root).validation("base"))
        start, epochs, reason = cfg.llm.adapter, [], None
        args = cfg.sft.trainer_args
        for epoch in range(1, s.sft_max_epochs + 1):
            adapter = self.root.sft_epoch(epoch)
            epoch_cfg = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"trainer_args": {
                **args, "num_train_epochs": 1, "data_seed": args.get("data_seed", cfg.seed) + epoch - 1}})})
            trained = run_sft(epoch_cfg, records, start, adapter, self.root.sft_epoch_log(epoch), self.show_progress)
            ev = evaluate_policy(with_adapter(vcfg, adapter), self.root.root, self.ds, self.grounder, self.show_progress,
                                 self.popularity, out=self.root.validation(policy_slug(self.root.root, adapter)))
            epochs.append({"epoch": epoch, key: ev[key], "steps": trained.get("steps"),
                           "first_loss": trained.get("first_loss"), "last_loss": trained.get("last_loss"),
                           "seconds": trained.get("seconds"), "adapter": str(adapter)})
            if self.show_progress:
                print(f"[sft] epoch {epoch}: valid {key} {ev[key]:.4f} (base {base[key]:.4f}, {len(users)} users)")
            if ev[key] > base[key]:
                reason = (f"epoch {epoch}: valid {key} {ev[key]:.4f} > base {base[key]:.4f}", "beats_base")
                break
            start = adapter
        else:
            reason = (f"sprec.sft_max_epochs = {s.sft_max_epochs} reached: valid {key} never above the base's "
                      f"{base[key]:.4f} (best {max(e[key] for e in epochs):.4f})", "max_epochs")
        summary = {
            "examples": len(records), "epochs": len(epochs), "stopped": reason[1], "reason": reason[0],
            "steps": sum(e["steps"] or 0 for e in epochs), "first_loss": epochs[0]["first_loss"],
            "last_loss": epochs[-1]["last_loss"], "seconds": round(sum(e["seconds"] or 0 for e in epochs), 1),
            "start_adapter": str(cfg.llm.adapter) if cfg.llm.adapter else None, "adapter": str(self.root.sft),
            "chosen": epochs[-1]["adapter"],
            "validation": {"metric": key, "split": "valid", "users": len(users), "base": base[key],
                           "max_epochs": s.sft_max_epochs, "per_epoch": [e[key] for e in epochs]},
            "per_epoch": epochs,
        }
        with atomic_directory(self.root.sft, tag=f"-{os.getpid()}") as tmp:  # complete = SFT done (rerun skips)
            shutil.copytree(epochs[-1]["adapter"], tmp, dirs_exist_ok=True)
            atomic_write_json(self.root.sft_log, {"summary": summary})
        return summary

    def generate(self, cfg, iteration: int) -> None:
        """Self-play: the current policy's GREEDY answer for every iteration user; for users whose
        answer is the target or empty (or who need more negatives), `sprec.samples` sampled answers."""
        if not self.sampler.from_policy:
            return  # the baselines draw negatives from the catalogue, not from the policy
        from rlrf.generation.generate import run_generate

        s = cfg.sprec
        users = iteration_users(self.ds, cfg, iteration)
        greedy = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"n": 1, "temperature": 0.0})})
        run_generate(greedy, iteration=iteration, mode="next_item", dataset=self.ds, users=users,
                     show_progress=self.show_progress)
        candidates = self._candidates(cfg, iteration, fallback=False)
        short = [u for u in users if len(self_play_negatives(
            self.grounder, self.ds.users[u].items[-1], candidates.get(u, []), cfg.score.negatives)) < cfg.score.negatives]
        if short:  # its own sub-run: its records and .meta.json never touch the greedy generation's
            sampled = cfg.model_copy(update={"run_dir": RunLayout(cfg.run_dir).self_play_fallback.root,
                                             "generate": cfg.generate.model_copy(update={
                                                 "n": s.samples, "temperature": s.fallback_temperature})})
            run_generate(sampled, iteration=iteration, mode="next_item", dataset=self.ds, users=short,
                         show_progress=self.show_progress, label=f"self-play fallback iter {iteration}")

    def _candidates(self, cfg, iteration: int, fallback: bool = True) -> dict[str, list]:
        """user -> [(k, text, grounding)] of this iteration's predictions, k=0 (greedy) first, then (with
        `fallback`) the fallback sub-run's sampled answers as k = 1, 2, ... (their own k + 1)."""
        from rlrf.generation.generate import load_responses

        layout = RunLayout(cfg.run_dir)
        records = load_responses(layout.root, iteration, "next_item")
        if fallback:
            records += [{**r, "k": r["k"] + 1}
                        for r in load_responses(layout.self_play_fallback.root, iteration, "next_item")]
        records = sorted(records, key=lambda r: (r["user"], r["k"]))
        groundings = self.grounder.ground([r["text"] for r in records])
        out: dict[str, list] = {}
        for r, g in zip(records, groundings):
            out.setdefault(r["user"], []).append((r["k"], r["text"], g))
        return out

    def score(self, cfg, iteration: int) -> dict:
        layout = RunLayout(cfg.run_dir)
        if layout.pairs(iteration).exists() and layout.pairs_meta(iteration).exists():
            return read_json(layout.pairs_meta(iteration))
        users = iteration_users(self.ds, cfg, iteration)
        prompts = next_item_prompts(cfg, self.ds, self.tokenizer(cfg), users)
        stats: dict = {"users": len(prompts)}
        if self.sampler.from_policy:
            negatives = self._self_play(cfg, iteration, prompts, stats)
        else:
            negatives = self._sampled(cfg, iteration, prompts)
        cat = self.ds.catalog
        pairs = build_pairs(self.ds, prompts, negatives, self.grounder.item_similarity, iteration)
        pop = self.popularity
        chosen_pop = [pop[cat.index(p.meta["target"])] for p in prompts]
        neg_pop = [pop[n.item] for negs in negatives.values() for n in negs if n.item is not None]
        stats.update({
            "pairs": len(pairs), "without_negative": len(prompts) - len(pairs),
            "sources": dict(Counter(n.source for negs in negatives.values() for n in negs)),
            "mean_target_popularity": float(np.mean(chosen_pop)) if chosen_pop else None,
            "mean_negative_popularity": float(np.mean(neg_pop)) if neg_pop else None,
            "popularity": "train users' interactions",
        })
        atomic_write_jsonl(layout.pairs(iteration), pairs)
        atomic_write_json(layout.pairs_meta(iteration), stats)
        return stats

    def _self_play(self, cfg, iteration: int, prompts, stats: dict) -> dict[str, list[Negative]]:
        """The policy's own answers that do not name the target (greedy first, then sampled), filled
        up with uniform catalogue items when the policy gave none, so every user makes a pair."""
        from rlrf.generation.generate import load_prompts
        from rlrf.generation.grounding import grounding_shares

        cat = self.ds.catalog
        used = load_prompts(cfg.run_dir, iteration, "next_item")
        for p in prompts:
            if used.get(p.key, {}).get("prompt_hash") != p.hash:
                raise UserError(f"{RunLayout(cfg.run_dir).iteration(iteration)}: predictions for user {p.key} "
                                "were generated from another prompt")
        candidates = self._candidates(cfg, iteration)
        greedy = [(p, c) for p in prompts for c in candidates.get(p.key, [])[:1] if c[0] == 0]
        stats["grounding"] = grounding_shares([g for _, (_, _, g) in greedy])
        stats["predictions"] = sum(len(c) for c in candidates.values())
        stats["greedy_is_target"] = sum(not usable_guess(self.grounder, t, g, cat.index(p.meta["target"])) and bool(t.strip())
                                        for p, (_, t, g) in greedy)
        stats["greedy_empty"] = sum(not t.strip() for _, (_, t, _) in greedy)
        k = cfg.score.negatives
        out = {}
        for p in prompts:
            target = cat.index(p.meta["target"])
            negs = self_play_negatives(self.grounder, target, candidates.get(p.key, []), k)
            if len(negs) < k:
                exclude = {*self.grounder.twins_of(target), *self.ds.users[p.key].items[:-1],
                           *(n.item for n in negs if n.item is not None)}
                fill = sampled_negatives(_rng(cfg.seed, "fallback", iteration, p.key), len(cat), k - len(negs), exclude)
                negs += [Negative(answer_text(cat, i), i, "catalogue") for i in fill]
            out[p.key] = negs
        return out

    def _sampled(self, cfg, iteration: int, prompts) -> dict[str, list[Negative]]:
        """Catalogue items outside the user's history and the target's title, uniformly or by popularity."""
        cat = self.ds.catalog
        popularity = self.popularity if self.sampler.by_popularity else None
        source = "popularity" if self.sampler.by_popularity else "random"
        negatives = {}
        for p in prompts:
            target = cat.index(p.meta["target"])
            exclude = {*self.grounder.twins_of(target), *self.ds.users[p.key].items[:-1]}
            drawn = sampled_negatives(_rng(cfg.seed, self.sampler_name, iteration, p.key), len(cat),
                                      cfg.score.negatives, exclude, popularity)
            negatives[p.key] = [Negative(answer_text(cat, i), i, source) for i in drawn]
        return negatives

    def align(self, cfg, iteration: int) -> Path:
        from rlrf.alignment.dpo import run_align
        from rlrf.alignment.sft import run_sft

        layout = RunLayout(cfg.run_dir)
        users = iteration_users(self.ds, cfg, iteration)
        run_sft(cfg, sft_records(cfg, self.ds, self.tokenizer(cfg), users), cfg.llm.adapter,
                layout.sft_adapter(iteration), layout.sft_adapter_log(iteration), self.show_progress)
        run_align(with_adapter(cfg, layout.sft_adapter(iteration)), iteration, show_progress=self.show_progress)
        return layout.adapter(iteration)

    def evaluate(self, cfg, label: str) -> dict:
        return evaluate_policy(cfg, self.root.root, self.ds, self.grounder, self.show_progress, self.popularity)


# -------------------------------------------------------------------------------------- evaluation


def policy_slug(root: Path, adapter: Path | None) -> str:
    """A folder name for a policy: ``base`` or its adapter's path under the run (``sft__adapter``)."""
    if adapter is None:
        return "base"
    adapter = Path(adapter)
    try:
        rel = adapter.resolve().relative_to(Path(root).resolve())
    except ValueError:
        return "adapter_" + hashlib.sha256(str(adapter.resolve()).encode()).hexdigest()[:12]
    return "__".join(rel.parts)


def evaluation_users(ds, cfg) -> list[str]:
    """Users of `sprec.eval_splits` (never trained on) with two or more items, evaluated on their last
    item; the first `loop.eval_users` of them when set."""
    users = [u for split in cfg.sprec.eval_splits for u in ds.splits[split] if len(ds.users[u].items) >= 2]
    return users[: cfg.loop.eval_users] if cfg.loop.eval_users else users


def validation_config(cfg):
    """The config the SFT stopping rule evaluates under: VALID users only (`evaluation_users` then
    returns the first `sprec.sft_valid_users` valid users with two or more items, never a test user),
    greedy answers under the run's protocol, HR at the one K `sprec.sft_valid_k` (default max(ks))."""
    s = cfg.sprec
    return cfg.model_copy(update={
        "sprec": s.model_copy(update={"eval_splits": ["valid"], "ks": [s.sft_valid_k or max(s.ks)]}),
        "loop": cfg.loop.model_copy(update={"eval_users": s.sft_valid_users}),
    })


def shown_history(ds, cfg, u: str) -> list[int]:
    """The items the prompt shows: the last `data.lists.max_history` before the target."""
    return ds.users[u].items[:-1][-cfg.data.lists.max_history:]


def recommendations(grounder, ds, records: list[dict], histories: dict[str, list[int]], k: int, topk: str,
                    exclude_history: bool, grounded_first: bool = True) -> tuple[list[str], np.ndarray, list]:
    """(users, top-K item indices [n, k] padded with -1, groundings of each user's first text).

    nearest: the items nearest the generated title's embedding (SPRec/BIGRec), with the grounded item
    first when `grounded_first`. samples: the grounded items of the sampled titles, most frequent first.
    """
    by_user: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: (r["user"], r["k"])):
        by_user.setdefault(r["user"], []).append(r)
    users = sorted(by_user)
    first = grounder.ground([by_user[u][0]["text"] for u in users])
    if topk == "nearest":
        exclude = [histories[u] if exclude_history else [] for u in users]
        recs = grounder.nearest([by_user[u][0]["text"] for u in users], k, exclude=exclude, grounded_first=grounded_first)
    else:
        recs = np.full((len(users), k), -1, dtype=np.int64)
        texts = [r["text"] for u in users for r in by_user[u]]
        grounded = iter(grounder.ground(texts))
        for row, u in enumerate(users):
            seen = set(histories[u]) if exclude_history else set()
            counts = Counter()
            for _ in by_user[u]:
                g = next(grounded)
                if g.item is not None and g.item not in seen:
                    counts[g.item] += 1
            items = [i for i, _ in counts.most_common(k)]
            recs[row, : len(items)] = items
    return users, recs, first


def title_ranks(recs: np.ndarray, targets: np.ndarray, twin: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each target in its list, -1 when absent; with `twin` (item -> first item of its
    title, `TitleGrounder.twin`) an item sharing the target's normalised title and year is a hit too."""
    from rlrf.evaluation import metrics as m

    recs, targets = np.asarray(recs, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    if twin is None:
        return m.target_ranks(recs, targets)
    twin = np.asarray(twin, dtype=np.int64)
    return m.target_ranks(np.where(recs >= 0, twin[np.clip(recs, 0, None)], -1),
                          np.where(targets >= 0, twin[np.clip(targets, 0, None)], -1))


def bias_and_ranking_metrics(recs: np.ndarray, targets: np.ndarray, history_items: np.ndarray, catalog,
                             ks: list[int], popularity=None, twin=None) -> dict:
    """Means over users of HR/NDCG@K (twin titles count as hits) and the list-level bias metrics;
    `popularity` defaults to the catalogue's counts (pass `train_popularity`)."""
    from rlrf.evaluation import metrics as m

    popularity = catalog.popularity if popularity is None else popularity
    ranks = title_ranks(recs, targets, twin)
    genre = catalog.genre_matrix()
    out: dict = {}
    for k in ks:
        hr, ndcg = m.hit_ndcg_at_k(ranks, k)
        mgu, dgu = m.mgu_dgu(recs, history_items, genre, k)
        filled = recs[:, :k][recs[:, :k] >= 0]
        out.update({
            f"hr@{k}": float(hr.mean()), f"ndcg@{k}": float(ndcg.mean()),
            f"div_ratio@{k}": m.div_ratio(recs, k), f"or_ratio@{k}": m.or_ratio(recs, k),
            f"mgu@{k}": mgu, f"dgu@{k}": dgu,
            f"mean_popularity@{k}": m.mean_popularity(recs, popularity, k) if filled.size else None,
        })
    return out


def per_user_hits(recs, targets, ks, twin=None) -> dict:
    """{"hr@K": [...], "ndcg@K": [...]} per user (the paired bootstrap's units)."""
    from rlrf.evaluation import metrics as m

    ranks = title_ranks(recs, targets, twin)
    out = {}
    for k in ks:
        hr, ndcg = m.hit_ndcg_at_k(ranks, k)
        out[f"hr@{k}"], out[f"ndcg@{k}"] = hr.tolist(), ndcg.round(6).tolist()
    return out


def popularity_bins(popularity) -> np.ndarray:
    """0, then log-spaced popularity bins (1 .. max count): items never seen in training and the long tail get their own bins."""
    top = max(float(np.max(popularity)), 2.0)
    return np.unique(np.concatenate([[0.0], np.round(np.geomspace(1, top + 1, 11))]))


def evaluation_histories(ds, cfg, users) -> tuple[dict, dict]:
    """(items masked from the top-K, items of MGU's history baseline) per user, by `sprec.eval_protocol`:
    sprec masks nothing and takes the shown history; rlrf masks (exclude_history) and takes every
    item before the target."""
    if cfg.sprec.eval_protocol == "sprec":
        shown = {u: shown_history(ds, cfg, u) for u in users}
        return {u: [] for u in users}, shown
    full = {u: ds.users[u].items[:-1] for u in users}
    return (full if cfg.sprec.exclude_history else {u: [] for u in users}), full


def evaluate_policy(cfg, root: Path, ds, grounder, show_progress: bool = True, popularity=None,
                    out: RunLayout | None = None) -> dict:
    """HR/NDCG (per user too), bias metrics and popularity histograms of the policy named by cfg.llm on
    `evaluation_users`, under `sprec.eval_protocol`.

    Cached in ``<root>/eval/<policy>/eval.json`` (or the sub-run `out`, e.g. a validation): methods that
    share a policy (SFT) evaluate it once; a cache of another protocol or user set is recomputed from
    the stored generations.
    """
    from rlrf.evaluation import metrics as m
    from rlrf.generation.generate import load_responses, run_generate

    s = cfg.sprec
    popularity = train_popularity(ds) if popularity is None else np.asarray(popularity)
    slug = policy_slug(root, cfg.llm.adapter)
    out = RunLayout(root).evaluation(slug) if out is None else out
    out_dir = out.root
    users = evaluation_users(ds, cfg)
    cached = read_json(out.eval_result)
    if (cached is not None and cached.get("protocol") == s.eval_protocol and cached.get("ks") == list(s.ks)
            and sorted(cached.get("per_user", {}).get("users", [])) == sorted(users)):
        return cached
    sampled = s.topk == "samples"
    gen = cfg.model_copy(update={"run_dir": out_dir, "generate": cfg.generate.model_copy(update={
        "n": s.eval_samples if sampled else 1, "temperature": cfg.generate.temperature if sampled else 0.0})})
    run_generate(gen, iteration=0, mode="next_item", dataset=ds, users=users, show_progress=show_progress)
    wanted = set(users)
    records = [r for r in load_responses(out_dir, 0, "next_item") if r["user"] in wanted]
    cat = ds.catalog
    masked, baseline = evaluation_histories(ds, cfg, users)
    k_max = max(s.ks)
    rec_users, recs, first = recommendations(grounder, ds, records, masked, k_max, s.topk,
                                             exclude_history=True, grounded_first=s.eval_protocol == "rlrf")
    targets = np.array([ds.users[u].items[-1] for u in rec_users], dtype=np.int64)
    history_items = np.array([i for u in rec_users for i in baseline[u]], dtype=np.int64)
    result = {
        "policy": str(cfg.llm.adapter) if cfg.llm.adapter else "base", "slug": slug,
        "users": len(rec_users), "topk": s.topk, "protocol": s.eval_protocol, "splits": list(s.eval_splits),
        "ks": list(s.ks),
        **bias_and_ranking_metrics(recs, targets, history_items, cat, s.ks, popularity, grounder.twin),
        "grounding": _shares(first),
        "top1_is_target": float(np.mean(title_ranks(recs[:, :1], targets, grounder.twin) == 0)) if len(targets) else 0.0,
        "per_user": {"users": rec_users, **per_user_hits(recs, targets, s.ks, grounder.twin)},
    }
    edges = popularity_bins(popularity)
    rec_hist, _ = m.popularity_histogram(recs[:, :k_max], popularity, edges)
    his_hist, _ = m.popularity_histogram(history_items, popularity, edges)
    result["popularity_histogram"] = {"edges": edges.tolist(), "recommended": rec_hist.round(5).tolist(),
                                      "history": his_hist.round(5).tolist()}
    atomic_write_jsonl(out.recommendations(0), (
        {"user": u, "target": cat.ids[t], "items": [cat.ids[i] for i in row if i >= 0]}
        for u, t, row in zip(rec_users, targets.tolist(), recs.tolist())))
    atomic_write_json(out.eval_result, result)
    return result


def _shares(groundings) -> dict:
    from rlrf.generation.grounding import grounding_shares

    return {k: round(v, 5) for k, v in grounding_shares(groundings).items()}


# ------------------------------------------------------------------------------------ orchestration


def make_grounder(cfg, ds, popularity=None):
    from rlrf.data.texts import load_encoder
    from rlrf.generation.grounding import TitleGrounder

    return TitleGrounder(ds.catalog, load_encoder(cfg.encoder, progress=False), min_similarity=cfg.sprec.min_similarity,
                         index_dir=RunLayout(cfg.run_dir).grounding,
                         popularity=train_popularity(ds) if popularity is None else popularity)


def training_seeds(cfg) -> list[int]:
    return list(cfg.sprec.seeds) if cfg.sprec.seeds else [cfg.seed]


def seed_root(cfg, seed: int) -> RunLayout:
    """The comparison folder of one training seed: the run itself, or ``seed_<s>/`` with `sprec.seeds`."""
    root = RunLayout(cfg.run_dir)
    return root if cfg.sprec.seeds is None else root.arm(f"seed_{seed}")


def arm_label(cfg, name: str, seed: int) -> str:
    return name if cfg.sprec.seeds is None else f"{name}@seed_{seed}"


def arms(cfg, show_progress: bool = True) -> list[tuple[object, SPRec]]:
    """(config, method) for each training seed and arm of `sprec.methods`, sharing one dataset (split by
    `seed`), one grounder and the train-only popularity; each runs on `run_loop` in its own folder."""
    from rlrf.data.dataset import load_dataset

    ds = load_dataset(cfg.data, seed=cfg.seed)
    popularity = train_popularity(ds)
    grounder = make_grounder(cfg, ds, popularity)
    out = []
    for seed in training_seeds(cfg):
        root = seed_root(cfg, seed)
        for name in cfg.sprec.methods:
            arm_cfg = cfg.model_copy(update={"run_dir": root.arm(name).root, "seed": seed})
            out.append((arm_cfg, SPRec(name, root.root, ds, grounder, show_progress, popularity=popularity,
                                       base_root=cfg.run_dir, label=arm_label(cfg, name, seed))))
    return out


# ----------------------------------------------------------------------- seeds pooled, CIs against SFT

PER_USER = ("hr", "ndcg")
AGGREGATE = ("div_ratio", "or_ratio", "mgu", "dgu", "mean_popularity")


class _Lists:
    """One evaluated policy's top-K lists, reduced to per-user parts that any resample of users sums."""

    def __init__(self, recs: np.ndarray, hist: list[list[int]], genre: np.ndarray, popularity: np.ndarray,
                 per_user: dict):
        self.recs, self.per_user = recs, per_user
        self.hist_mass = np.stack([genre[h].sum(0) if len(h) else np.zeros(genre.shape[1]) for h in hist])
        self.genre, self.popularity = genre, popularity

    def statistic(self, key: str, idx: np.ndarray) -> np.ndarray:
        """The metric over each row of user indices `idx` [B, U] (a resample), as [B]."""
        name, k = key.rsplit("@", 1)
        k = int(k)
        if name in PER_USER:
            return np.asarray(self.per_user[key], dtype=float)[idx].mean(1)
        top = self.recs[:, :k]
        filled = top >= 0
        if name in ("div_ratio", "or_ratio"):
            n_items = len(self.popularity)
            items, ok = top[idx].reshape(len(idx), -1), filled[idx].reshape(len(idx), -1)
            rows = np.broadcast_to(np.arange(len(idx))[:, None], items.shape)
            counts = np.bincount((rows * n_items + items)[ok], minlength=len(idx) * n_items).reshape(len(idx), n_items)
            vals = ((counts > 0).sum(1) if name == "div_ratio"
                    else np.partition(counts, -3, axis=1)[:, -3:].sum(1) if n_items >= 3 else counts.sum(1))
            return np.asarray(vals, dtype=float) / (k * idx.shape[1])
        if name == "mean_popularity":
            pop = np.where(filled, self.popularity[np.clip(top, 0, None)], 0.0).sum(1)
            return pop[idx].sum(1) / np.maximum(filled.sum(1)[idx].sum(1), 1)
        rec_mass = np.stack([self.genre[r[r >= 0]].sum(0) for r in top])
        gh = self.hist_mass[idx].sum(1)
        gp = rec_mass[idx].sum(1)
        diff = gp / np.maximum(gp.sum(1, keepdims=True), 1e-12) - gh / np.maximum(gh.sum(1, keepdims=True), 1e-12)
        return np.abs(diff).mean(1) if name == "mgu" else diff.max(1) - diff.min(1)


def metric_keys(ks) -> list[str]:
    return [f"{name}@{k}" for k in ks for name in PER_USER + AGGREGATE]


def compare(rows: dict[str, dict[int, "_Lists"]], reference: str, keys: list[str], n_boot: int, seed: int = 0) -> dict:
    """Per row (label -> {seed: lists}): each metric's mean and sd over seeds, and its difference from
    `reference` (SFT) with a paired percentile-bootstrap 95% CI: users are resampled (the same
    resample for every seed and policy) and the difference is averaged over the seeds both share."""
    from rlrf.evaluation.stats import mean_sd

    ref = rows[reference]
    n_users = len(next(iter(ref.values())).recs)
    every = np.arange(n_users)[None, :]
    boots = np.random.default_rng(seed).integers(0, n_users, size=(n_boot, n_users))
    ref_point = {(s, key): ref[s].statistic(key, every)[0] for s in ref for key in keys}
    ref_boot = {(s, key): ref[s].statistic(key, boots) for s in ref for key in keys}
    out = {}
    for label, by_seed in rows.items():
        seeds = [s for s in by_seed if s in ref]
        entry = {"seeds": sorted(by_seed), "users": n_users, "metrics": {}}
        for key in keys:
            values = [float(by_seed[s].statistic(key, every)[0]) for s in sorted(by_seed)]
            mean, sd = mean_sd(values)
            cell = {"mean": mean, "sd": sd, "per_seed": values}
            if label != reference and seeds:
                point = np.mean([values[sorted(by_seed).index(s)] - ref_point[s, key] for s in seeds])
                dist = np.mean([by_seed[s].statistic(key, boots) - ref_boot[s, key] for s in seeds], axis=0)
                cell["vs_sft"] = {"mean": float(point),
                                  "ci95": [float(np.quantile(dist, 0.025)), float(np.quantile(dist, 0.975))]}
            entry["metrics"][key] = cell
        out[label] = entry
    return out


def _load_lists(cfg, ds, root: RunLayout, ev: dict, users: list[str], genre, popularity) -> "_Lists":
    cat = ds.catalog
    k_max = max(cfg.sprec.ks)
    folder = root.evaluation(ev["slug"])
    by_user = {r["user"]: r for r in read_jsonl_file(folder.recommendations(0))}
    recs = np.full((len(users), k_max), -1, dtype=np.int64)
    for row, u in enumerate(users):
        items = [cat.index(i) for i in by_user[u]["items"]][:k_max]
        recs[row, : len(items)] = items
    _, baseline = evaluation_histories(ds, cfg, users)
    per = ev["per_user"]
    pos = {u: j for j, u in enumerate(per["users"])}
    per_user = {key: [per[key][pos[u]] for u in users] for key in per if key != "users"}
    return _Lists(recs, [baseline[u] for u in users], genre, popularity, per_user)


def read_jsonl_file(path: Path) -> list[dict]:
    from rlrf.core.io import read_jsonl

    return list(read_jsonl(path))


def collect(cfg, arm_metrics: dict[str, dict]) -> dict:
    """The comparison's metrics.json: the base and SFT evaluations, the SFT log, every arm's record
    (seed by seed) and `comparison`: each policy pooled over seeds with paired CIs against SFT."""
    from rlrf.data.dataset import load_dataset

    root = RunLayout(cfg.run_dir)
    seeds = training_seeds(cfg)
    by_seed = {s: {name: arm_metrics[arm_label(cfg, name, s)] for name in cfg.sprec.methods
                   if arm_label(cfg, name, s) in arm_metrics} for s in seeds}
    by_seed = {s: arms_ for s, arms_ in by_seed.items() if arms_}
    first_seed = next(iter(by_seed))
    metrics: dict = {"method": "sprec", "seeds": list(by_seed), "protocol": cfg.sprec.eval_protocol,
                     "evaluations": {}, "methods": by_seed[first_seed]}
    if len(by_seed) > 1 or cfg.sprec.seeds is not None:
        metrics["seed_runs"] = {str(s): arms_ for s, arms_ in by_seed.items()}
    base = read_json(root.evaluation("base").eval_result)
    if cfg.sprec.evaluate_base and base is not None:
        metrics["evaluations"]["base"] = base
    metrics["sft"] = (read_json(seed_root(cfg, first_seed).sft_log) or {}).get("summary", {})
    metrics["evaluations"]["sft"] = next(iter(by_seed[first_seed].values()))["evaluations"]["policy_0"]

    ds = load_dataset(cfg.data, seed=cfg.seed)
    popularity = train_popularity(ds).astype(float)
    genre = ds.catalog.genre_matrix().astype(float)
    users = sorted(metrics["evaluations"]["sft"]["per_user"]["users"])
    rows: dict[str, dict[int, _Lists]] = {}

    def add(label: str, seed: int, lroot: RunLayout, ev: dict | None) -> None:
        if ev is not None and "per_user" in ev and sorted(ev["per_user"]["users"]) == users:
            rows.setdefault(label, {})[seed] = _load_lists(cfg, ds, lroot, ev, users, genre, popularity)

    if "base" in metrics["evaluations"]:
        for s in by_seed:
            add("base (no SFT)", s, root, base)
    for s, arms_ in by_seed.items():
        add("SFT", s, seed_root(cfg, s), next(iter(arms_.values()))["evaluations"]["policy_0"])
    iterations = max(len(m["evaluations"]) for arms_ in by_seed.values() for m in arms_.values())
    for t in range(1, iterations):
        for s, arms_ in by_seed.items():
            for name, m in arms_.items():
                add(f"{SAMPLERS[name].title} iter {t}", s, seed_root(cfg, s), m["evaluations"].get(f"policy_{t}"))
    if "SFT" in rows:
        metrics["comparison"] = compare(rows, "SFT", metric_keys(cfg.sprec.ks), cfg.sprec.bootstrap, cfg.seed)
    atomic_write_json(root.metrics, metrics)
    return metrics
