"""SPRec on the shared loop: the policy writes the next item's title; its own wrong guesses are DPO negatives.

SFT and DPO on random negatives both learn the popularity bias of the data: a model that names the
blockbusters is rarely far wrong. Self-play makes the policy's own favourite answers the negatives
of the next round, so what it over-recommends is pushed down while SFT on real next items keeps it
accurate. The baselines run the same loop with random or popularity-sampled catalogue negatives.

Each arm is a `Method` on the one loop (`rlrf.methods.loop.run_loop`): its `prepare` is the SFT
shared by all arms (run once, found done by the others), and its negatives come from a sampler of
`SAMPLERS` (self-play, uniform, popularity). `rlrf sprec` runs every arm of `sprec.methods`, then
`collect` gathers their records into the run's metrics.json for the report.

One job per module:

    examples.py     which train users each stage sees; the SFT records (sliding windows, fresh positives)
    negatives.py    the samplers (`SAMPLERS`, self-play and catalogue negatives) and the pairs they make
    method.py       `SPRec`, one arm on the loop, and `arms`, one per training seed and arm
    evaluation.py   the evaluation protocol: top-K lists from greedy titles, HR/NDCG and bias metrics
    comparison.py   training seeds, and every policy against SFT pooled over seeds with paired CIs
    references.py   popularity and SASRec scored beside the policies (same users, protocol, scorer)
    stages.py       the next-item generation call: one policy, its layout, seed, n and temperature

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
    eval/popularity/, eval/sasrec/       the reference recommenders' lists and eval.json (`sprec.references`)
    sasrec/                              the reference SASRec (cached by fingerprint)
    metrics.json, report.md, *.png       every method side by side, pooled over seeds, paired CIs vs SFT
"""

from rlrf.methods.sprec.comparison import collect
from rlrf.methods.sprec.examples import sft_records, sft_users
from rlrf.methods.sprec.method import SPRec, arms
from rlrf.methods.sprec.negatives import SAMPLERS
from rlrf.methods.sprec.references import evaluate_references

__all__ = ["SAMPLERS", "SPRec", "arms", "collect", "evaluate_references", "sft_records", "sft_users"]
