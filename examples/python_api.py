"""mkeval from Python: run a small matrix, then read its result files.

    python examples/python_api.py [OUTPUT_DIR]

Two models on the synthetic ``markov`` data with a tiny budget (well under a minute on a CPU).
``mkeval.run`` takes the options of ``mkeval run`` as keywords (``--seq-len`` is ``seq_lens``,
``--limit-windows`` is ``limit_windows``) and any protocol field (``lr=1e-3``); docs/protocol.md.
The result files it writes are plain JSON (docs/results.md), readable without mkeval.
"""

import json
import sys
from pathlib import Path

import mkeval


def main(output_dir: str = "api-results") -> None:
    result = mkeval.run(
        models="transformer,bk",
        datasets="markov",
        seq_lens=[64],
        seeds=[0],
        train_tokens=16_384,  # tokens per cell: 16 steps of 16 sequences x 64 tokens
        limit_windows=16,  # evaluate 16 validation and 16 test windows per cell
        output_dir=output_dir,
    )
    if result.failed:
        raise SystemExit(f"{len(result.failed)} cell(s) failed: {', '.join(c.name for c in result.failed)}")

    # What mkeval.run returns: one CellResult per finished cell (mkeval.results.CellResult).
    for cell in result.results:
        print(f"{cell.model_name:12s} test perplexity {cell.test_perplexity:7.3f} "
              f"(best achievable {cell.optimal_perplexity:.3f}, gap {cell.perplexity_gap:.1%}), "
              f"{cell.non_embedding_params:,} non-embedding parameters")

    # The same numbers from the files on disk: one JSON file per cell plus run_summary.json.
    out = Path(output_dir)
    summary = json.loads((out / "run_summary.json").read_text())
    print(f"protocol {summary['protocol_hash']}: {summary['counts']}")
    for status in summary["cells"]:
        cell = json.loads((out / status["result_file"]).read_text())
        print(f"{status['name']}: {cell['tokens_per_second']:,.0f} training tokens/s, "
              f"{cell['test_tokens']} test tokens scored")


if __name__ == "__main__":
    main(*sys.argv[1:])
