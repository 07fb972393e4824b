"""`rlrf score`: the recommender's feedback on each summary, and the preference pairs built from it.

Every (user, k) response of an iteration is scored by the reward model: NDCG@K / MAP@K of the user's
reranked list when that response is the user's knowledge. Scores are appended to scores.jsonl in
batches (resumable like generate). Pairs are then derived from all scores at once: chosen = the
best response, rejected = the worst (or the `score.negatives` worst), ranked by the reward less
`score.copy_penalty` × the share of the response copied from its prompt. Only training users make
pairs, so validation and test users stay unseen by alignment.

Two options steer pairs toward summaries that end (both off by default): among summaries whose pair
reward is within `score.prefer_finished_within` of the best, the best one that ended with EOS is
chosen; among those within `score.reject_looping_within` of the worst, the worst one cut at the
length cap that repeats itself is rejected. The reward does not see a summary loop into
`generate.max_new_tokens`; near-equal rewards then decide for the summary a reader would keep.

A third (`score.trim_to_sentence`, off by default) changes what is scored and trained instead of
which summary is picked: a training summary cut at the cap becomes its text up to its last closed
sentence, ended (trained with the EOS it did not write). Cut summaries otherwise enter the pairs
without EOS while many short ones that stopped are rejected, so the pairs teach not stopping. The
evaluations never trim: what they report is what the policy wrote.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

from rlrf.core.config import ScoreConfig
from rlrf.core.errors import UserError
from rlrf.core.io import JsonlLog, atomic_write_json, atomic_write_jsonl, read_jsonl
from rlrf.core.layout import RunLayout
from rlrf.core.records import PairRecord
from rlrf.core.progress import progress_bar
from rlrf.evaluation.copying import copied_share
from rlrf.evaluation.text import has_repeat, up_to_last_sentence


@dataclass
class PairStats:
    users: int = 0
    pairs: int = 0
    skipped_tie: int = 0  # best and worst reward equal
    skipped_margin: int = 0  # best − worst below score.min_margin
    skipped_empty_best: int = 0  # the best response is empty: nothing worth imitating
    skipped_not_train: int = 0  # valid/test users never make pairs
    skipped_single: int = 0  # fewer than two responses


def _finished(response: dict) -> bool:
    return response.get("finished", True)  # a record from before the flag: ended on its own


def _looping(response: dict) -> bool:
    """Cut at the length cap and repeating itself: the summary the reward cannot tell apart."""
    return not _finished(response) and has_repeat(response["text"])


def trimmed(response: dict) -> dict:
    """A summary cut at the cap as `score.trim_to_sentence` scores and trains it: up to its last
    closed sentence, ended, marked `trimmed`; unchanged when it ended or nothing closes before the cut."""
    if _finished(response):
        return response
    kept = up_to_last_sentence(response["text"])
    if kept is None:
        return response
    return {**response, "text": kept, "finished": True, "trimmed": True}


def choose_best(ranked: list[dict], reward, within: float | None) -> int:
    """The index in `ranked` (best first) of the chosen summary: the best, or with `within` set the
    best non-empty one that ended with EOS among those within `within` of the best reward, as long
    as one ranks below it to be rejected."""
    if within is not None:
        for i, r in enumerate(ranked[:-1]):
            if reward(ranked[0]) - reward(r) > within:
                break
            if _finished(r) and r["text"].strip():
                return i
    return 0


def worst_first(below: list[dict], reward, within: float | None) -> list[dict]:
    """The summaries ranked below the chosen one, worst first; with `within` set, the worst that was
    cut at the cap and repeats itself among those within `within` of the worst goes first."""
    order = below[::-1]
    if within is not None:
        for i, r in enumerate(order):
            if reward(r) - reward(order[0]) > within:
                break
            if _looping(r):
                return [r, *order[:i], *order[i + 1:]]
    return order


def build_pairs(
    responses: list[dict], scores: dict[tuple[str, int], float], prompts: dict[str, str],
    train_users: set[str], negatives: int = 1, min_margin: float = 0.0, *,
    prefer_finished_within: float | None = None, reject_looping_within: float | None = None,
) -> tuple[list[dict], PairStats]:
    """Best vs worst (or k worst) per user. Ties in reward keep the lower sample index first.

    `prefer_finished_within` / `reject_looping_within` (None = off; `score.*`, see the module
    docstring) trade up to that much reward for a chosen summary that ended and a rejected one that
    loops; the rejected always ranks below the chosen, so the margin stays the reward's order."""
    by_user: dict[str, list[dict]] = defaultdict(list)
    for r in responses:
        by_user[r["user"]].append(r)
    stats = PairStats(users=len(by_user))
    pairs = []
    for user in sorted(by_user):
        if user not in train_users:
            stats.skipped_not_train += 1
            continue
        ranked = sorted(by_user[user], key=lambda r: (-scores[(user, r["k"])], r["k"]))
        if len(ranked) < 2:
            stats.skipped_single += 1
            continue
        reward = lambda r: scores[(user, r["k"])]  # noqa: E731
        top = choose_best(ranked, reward, prefer_finished_within)
        best = ranked[top]
        below = worst_first(ranked[top + 1:], reward, reject_looping_within)
        worst = below[0]
        margin = reward(best) - reward(worst)
        if margin == 0:
            stats.skipped_tie += 1
            continue
        if margin < min_margin:
            stats.skipped_margin += 1
            continue
        if not best["text"].strip():
            stats.skipped_empty_best += 1
            continue
        negatives_kept = below[: max(1, min(negatives, len(below)))]
        several = negatives > 1
        pairs.append(PairRecord(
            user=user, iter=best["iter"], prompt=prompts[user], chosen=best["text"], rejected=worst["text"],
            margin=margin, chosen_k=best["k"], rejected_k=worst["k"],
            # a summary cut at generate.max_new_tokens: trained without the EOS it never wrote
            chosen_finished=best.get("finished", True), rejected_finished=worst.get("finished", True),
            rejected_list=[r["text"] for r in negatives_kept] if several else None,
            rejected_finished_list=[r.get("finished", True) for r in negatives_kept] if several else None,
            rejected_margins=[reward(best) - reward(r) for r in negatives_kept] if several else None,
        ).to_dict())
        stats.pairs += 1
    return pairs, stats


def pair_rewards(responses: list[dict], scored: dict, prompts: dict[str, str], metric: str,
                 copy_penalty: float = 0.0) -> dict[tuple[str, int], float]:
    """What the pairs rank by: the reward, less `copy_penalty` × the share of the response copied
    from its user's prompt (restating the history is how the policy gamed the reward)."""
    rewards = {key: s[metric] for key, s in scored.items()}
    if copy_penalty:
        text = {(r["user"], r["k"]): r["text"] for r in responses}
        rewards = {key: v - copy_penalty * copied_share(text[key], prompts[key[0]]) for key, v in rewards.items()}
    return rewards


def finish_preference(score: ScoreConfig) -> dict[str, float]:
    """`build_pairs`' options for summaries that end that the `score:` section sets (empty when off)."""
    options = {"prefer_finished_within": score.prefer_finished_within, "reject_looping_within": score.reject_looping_within}
    return {name: value for name, value in options.items() if value is not None}


def guard_changes(guarded: list[dict], plain: list[dict]) -> dict[str, int]:
    """How many users' chosen / rejected sample the copy penalty changed: on the scale of the reward's
    spread, the penalty decides some pairs by copying instead of by reward (README, the quickstart)."""
    plain_by_user = {p["user"]: p for p in plain}
    both = [(p, plain_by_user[p["user"]]) for p in guarded if p["user"] in plain_by_user]
    return {"chosen": sum(g["chosen_k"] != q["chosen_k"] for g, q in both),
            "rejected": sum(g["rejected_k"] != q["rejected_k"] for g, q in both)}


def score_iteration(layout: RunLayout, iteration: int, scorer, score: ScoreConfig, show_progress: bool = True,
                    label: str | None = None, *, trim: bool = False) -> tuple[list[dict], dict[tuple[str, int], dict]]:
    """Score every response of the iteration not yet in scores.jsonl; returns (responses, scores by (user, k)).

    `trim` (training iterations with `score.trim_to_sentence`): responses cut at the cap are scored
    and returned as `trimmed` makes them. A score row says whether its text was trimmed; rows made
    under the other setting are dropped and rescored, so a rerun with the option flipped is consistent."""
    from rlrf.generation.generate import load_responses

    responses = load_responses(layout.root, iteration)
    if not responses:
        raise UserError(f"{layout.responses(iteration)}: no responses; run `rlrf generate` for iteration {iteration} first")
    if trim:
        responses = [trimmed(r) for r in responses]
    log = JsonlLog(layout.scores(iteration), key=_score_key)  # repairs a torn tail first
    wanted = {_score_key(r) for r in responses}
    log.drop({key for key in log.done if (key[0], key[1], not key[2]) in wanted})  # scored under the other trim setting
    todo = [r for r in responses if _score_key(r) not in log]
    batch = score.batch_size
    with progress_bar(show_progress) as progress:
        task = progress.add_task(label or f"score iter {iteration}", total=len(todo))
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            metrics = scorer.score([r["user"] for r in chunk], [r["text"] for r in chunk])
            log.append(
                {"user": r["user"], "iter": iteration, "k": r["k"],
                 **{name: (bool(v[i]) if name == "empty" else float(v[i])) for name, v in metrics.items()},
                 **({"flag": r["flag"]} if "flag" in r else {}), **({"trimmed": True} if r.get("trimmed") else {})}
                for i, r in enumerate(chunk)
            )
            progress.advance(task, len(chunk))
    scored = {(s["user"], s["k"]): s for s in read_jsonl(log.path)}
    if score.metric not in next(iter(scored.values())):
        names = sorted(k for k in next(iter(scored.values())) if "@" in k)
        raise UserError(f"score.metric: '{score.metric}' is not one of {', '.join(names)}")
    return responses, scored


def _score_key(record: dict) -> tuple[str, int, bool]:
    """A score row's key: the response, and whether its text was trimmed (a response or a row)."""
    return record["user"], record["k"], bool(record.get("trimmed"))


def score_responses(cfg, iteration: int, scorer, show_progress: bool = True,
                    label: str | None = None) -> tuple[list[dict], dict[tuple[str, int], dict]]:
    """`score_iteration` for a whole run config (the recipes' adapter)."""
    return score_iteration(RunLayout(cfg.run_dir), iteration, scorer, cfg.score, show_progress, label)


def score_and_pair(layout: RunLayout, iteration: int, scorer, score: ScoreConfig, train_users: set[str],
                   show_progress: bool = True) -> PairStats:
    """Score the iteration's responses (skipping rows already scored), then rewrite its pairs."""
    from rlrf.generation.generate import load_prompts

    responses, scored = score_iteration(layout, iteration, scorer, score, show_progress, trim=score.trim_to_sentence)
    metric = score.metric
    prompts = {u: r["prompt"] for u, r in load_prompts(layout.root, iteration).items()}

    def pairs_by(copy_penalty: float, prefer_ending: bool = True) -> tuple[list[dict], PairStats]:
        rewards = pair_rewards(responses, scored, prompts, metric, copy_penalty)
        return build_pairs(responses, rewards, prompts, train_users, score.negatives, score.min_margin,
                           **(finish_preference(score) if prefer_ending else {}))

    pairs, stats = pairs_by(score.copy_penalty)
    meta = {"metric": metric, "copy_penalty": score.copy_penalty, **asdict(stats)}
    if score.copy_penalty:
        meta["changed_by_copy_penalty"] = guard_changes(pairs, pairs_by(0.0)[0])
    if score.trim_to_sentence:
        meta["trimmed"] = sum(bool(r.get("trimmed")) for r in responses)
    if finish_preference(score):
        meta.update(finish_preference(score))
        meta["changed_by_finish_preference"] = guard_changes(pairs, pairs_by(score.copy_penalty, prefer_ending=False)[0])
    atomic_write_jsonl(layout.pairs(iteration), pairs)
    atomic_write_json(layout.pairs_meta(iteration), meta)
    return stats


def run_score(cfg, iteration: int = 0, scorer=None, dataset=None, show_progress: bool = True) -> PairStats:
    """`score_and_pair` for a whole run config: the run's dataset and reward model unless given."""
    from rlrf.data.dataset import load_dataset
    from rlrf.reward.scorer import RewardScorer

    ds = dataset if dataset is not None else load_dataset(cfg.data, seed=cfg.seed)
    scorer = scorer if scorer is not None else RewardScorer.from_run(cfg, ds=ds, progress=show_progress)
    return score_and_pair(RunLayout(cfg.run_dir), iteration, scorer, cfg.score, set(ds.splits["train"]), show_progress)
