"""Does adding a domain unbalance the router? Leave-one-domain-out on the shared collections.

Run by hand (not in CI), on a root that holds one expert per shared collection
(expert name = collection folder name)::

    RR_DATA_DIR=data/experts python bench/new_domains.py --datasets ../shared/datasets

For each collection X in turn, X plays the domain added later: the router is
first built over the other four experts (their test queries' routing accuracy
is the "before"), then over all five, X included, with nothing else changed
(the "after", plus X's own test queries' accuracy). Routing is the deployed
decision (``SearchEngine.route``: pilots plus corpus votes, the settings'
router options), so ``RR_ROUTER_*`` variants can be compared run against run.
Test queries only measure here; nothing is tuned on them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.engine import SearchEngine  # noqa: E402
from app.engine.loading import open_encoder  # noqa: E402
from app.offline.evaluation import read_test_set  # noqa: E402
from app.settings import Settings  # noqa: E402
from router import RoutePolicy  # noqa: E402

COLLECTIONS = ("scifact", "cranfield", "cacm", "cisi", "npl")


def routed_home(engine: SearchEngine, texts: dict[str, list[str]]) -> dict[str, float]:
    """Share of each collection's queries whose top expert is that collection's."""
    shares = {}
    for name, queries in texts.items():
        decisions = engine.route(queries, policy=RoutePolicy())
        shares[name] = float(np.mean([d.experts[0] == name for d in decisions]))
    return shares


def engine_over(settings: Settings, encoder, names: list[str], scratch: Path) -> SearchEngine:
    """An engine over a root of symbolic links to ``names`` only (the experts themselves are not copied)."""
    root = Path(tempfile.mkdtemp(dir=scratch))
    for name in names:
        (root / name).symlink_to(settings.data_dir.resolve() / name, target_is_directory=True)
    return SearchEngine.open(root, encoder, settings.engine_config(), verify_checksums=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, required=True)
    args = parser.parse_args()
    settings = Settings()
    encoder = open_encoder(settings)
    texts = {name: read_test_set(args.datasets, name).texts for name in COLLECTIONS}
    counts = {name: len(t) for name, t in texts.items()}
    print(
        f"router: {settings.router_aggregate}, evidence {settings.router_evidence}, depth {settings.router_vote_depth}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        full = engine_over(settings, encoder, list(COLLECTIONS), Path(scratch))
        with_all = routed_home(full, texts)
        full.close()
        print("all five: " + ", ".join(f"{n} {s:.1%}" for n, s in with_all.items()))
        rows = []
        for added in COLLECTIONS:
            others = [n for n in COLLECTIONS if n != added]
            before_engine = engine_over(settings, encoder, others, Path(scratch))
            before = routed_home(before_engine, {n: texts[n] for n in others})
            before_engine.close()
            micro_before = sum(before[n] * counts[n] for n in others) / sum(counts[n] for n in others)
            micro_after = sum(with_all[n] * counts[n] for n in others) / sum(counts[n] for n in others)
            worst = min(others, key=lambda n: with_all[n] - before[n])
            rows.append((added, micro_before, micro_after, worst, before[worst], with_all[worst], with_all[added]))
    print(f"\n{'added':<10}{'others before':>15}{'after':>8}{'drop':>7}  {'most hurt':<28}{'added itself':>13}")
    for added, b, a, worst, wb, wa, own in rows:
        print(f"{added:<10}{b:>15.1%}{a:>8.1%}{(a - b) * 100:>+7.1f}  {worst} {wb:.1%} -> {wa:.1%}{'':<6}{own:>13.1%}")


if __name__ == "__main__":
    main()
