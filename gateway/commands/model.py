"""``edgegw model``: fit, evaluate and inspect anomaly models (logic in ``edgegw.edge.fit`` and
``edgegw.edge.evaluate``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgegw.edge.evaluate import add_eval_arguments, run_eval
from edgegw.edge.fit import FitError, fit_model, inspect_model, read_csv_samples
from edgegw.model import Sample
from edgegw.runtime.outbox_reader import read_outbox_samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``edgegw model``: subcommands ``fit``, ``eval`` and ``inspect``."""
    sub = parser.add_subparsers(dest="model_command", metavar="{fit,eval,inspect}")
    sub.required = True
    add_fit_arguments(sub.add_parser("fit", help="fit a PCA autoencoder to recorded normal data"))
    add_eval_arguments(
        sub.add_parser("eval", help="score a model or the online detector on a labelled CSV")
    )
    inspect = sub.add_parser("inspect", help="show a model's spec, tensor shapes and runtime")
    inspect.add_argument("model", type=Path, help="a .tflite file (its spec: .json beside it)")
    inspect.add_argument("--spec", type=Path, help="the spec, if not beside the model")


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgegw model fit``."""
    src = parser.add_argument_group("data (at least one)")
    src.add_argument(
        "--csv",
        type=Path,
        action="append",
        default=[],
        help="CSV with columns ts_ms,device,metric,value (cloud `query --format csv`)",
    )
    src.add_argument(
        "--outbox",
        type=Path,
        metavar="STATE_DIR",
        help="read samples still stored in this gateway state dir's outbox",
    )
    src.add_argument("--gateway-id", help="gateway id for --outbox (default: from the state dir)")
    parser.add_argument("--device", help="device id (required when the data has several)")
    parser.add_argument(
        "--metrics",
        help="comma-separated features in order (default: all numeric "
        "metrics of the device, sorted)",
    )
    parser.add_argument("--window", type=int, default=16, help="rows per window (default 16)")
    parser.add_argument(
        "--out", type=Path, required=True, help="output .tflite path (spec: .json beside)"
    )
    parser.add_argument(
        "--components", type=int, help="PCA components (default: above the noise floor)"
    )
    parser.add_argument(
        "--variance",
        type=float,
        default=None,
        help="pick the fewest components explaining this variance (e.g. 0.99)",
    )
    parser.add_argument(
        "--sigmas",
        type=float,
        default=5.0,
        help="static threshold: held-out log-error median + this many robust sd (default 5)",
    )
    parser.add_argument(
        "--margin", type=float, default=1.0, help="static threshold factor (default 1.0)"
    )
    parser.add_argument(
        "--force", action="store_true", help="write the model even when its calibration is broken"
    )
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="fraction of (latest) windows kept for calibration (default 0.2)",
    )
    parser.add_argument(
        "--max-gap",
        default=None,
        help="a gap between rows longer than this splits windows (default 5x the "
        "median row interval)",
    )


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "model_command", "fit")
    try:
        if command == "inspect":
            summary = inspect_model(args.model, args.spec)
        elif command == "eval":
            summary = run_eval(args)
        else:
            samples: list[Sample] = []
            sources: list[str] = []
            for path in args.csv:
                samples.extend(read_csv_samples(path))
                sources.append(str(path))
            if args.outbox is not None:
                samples.extend(read_outbox_samples(args.outbox, args.gateway_id))
                sources.append(f"outbox:{args.outbox}")
            summary = fit_model(
                samples,
                sources,
                out=args.out,
                device=args.device,
                metrics=args.metrics,
                window=args.window,
                components=args.components,
                variance=args.variance,
                sigmas=args.sigmas,
                margin=args.margin,
                holdout=args.holdout,
                max_gap=args.max_gap,
                force=args.force,
            )
            message = summary["calibration"].get("message")
            if message:
                print(f"edgegw model fit: warning: {message}", file=sys.stderr)
    except (FitError, OSError, ValueError) as exc:
        print(f"edgegw model {command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
