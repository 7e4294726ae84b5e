"""Command line: `python -m npuport inspect PATH --json` and the stages outside Snakemake."""

from __future__ import annotations

import argparse
import json
import sys

from npuport.core.errors import NpuportError


def _inspect(args: argparse.Namespace) -> None:
    from npuport.weights.introspect import introspect_checkpoint

    document = introspect_checkpoint(args.path, sample_rows=args.sample_rows)
    if args.json:
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return
    for field, value in document["derived"].items():
        if field != "ternary":
            print(f"{field:24} {value}")
    ternary = document["derived"]["ternary"]
    print(f"{'ternary':24} {ternary['status']} (group size {ternary['group_size']})")
    for mismatch in document["mismatches"]:
        print(f"mismatch: {mismatch['field']}: config says {mismatch['declared']}, weights say {mismatch['derived']}")
    for ambiguity in document["ambiguities"]:
        print(f"ambiguous: {ambiguity['field']}: {ambiguity['reason']} candidates {ambiguity['candidates']}")


def _fuse(args: argparse.Namespace) -> None:
    from pathlib import Path

    from npuport.core.settings import parse_size
    from npuport.weights.fuse import fuse
    from npuport.weights.introspect import introspect_checkpoint
    from npuport.weights.repair_config import repair
    from npuport.weights.tokenizer_check import check_checkpoint_tokenizer

    introspection = introspect_checkpoint(args.path)
    config, _ = repair(Path(args.path) / "config.json", introspection, args.trust_remote_code)
    check_checkpoint_tokenizer(args.path, config, args.trust_remote_code)
    document = fuse(
        args.path,
        config,
        introspection,
        args.out,
        mode=args.mode,
        group_size=args.group_size,
        max_shard_size=parse_size(args.max_shard_size),
    )
    print(document["decision"])
    print(f"wrote {args.out}: {len(document['shards'])} shard(s), {document['total_bytes']} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="npuport", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="derive the architecture of a checkpoint directory from its weights")
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true", help="print the introspection document as JSON")
    inspect.add_argument("--sample-rows", type=int, default=8, help="rows sampled per linear for the ternary check")
    inspect.set_defaults(run=_inspect)
    fuse = commands.add_parser("fuse", help="repair the config and fuse a checkpoint into a Hugging Face model dir")
    fuse.add_argument("path")
    fuse.add_argument("out")
    fuse.add_argument("--mode", choices=["auto", "always", "never"], default="auto")
    fuse.add_argument("--group-size", type=int, default=128)
    fuse.add_argument("--max-shard-size", default="2GB")
    fuse.add_argument("--trust-remote-code", action="store_true")
    fuse.set_defaults(run=_fuse)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except NpuportError as exc:
        print(f"npuport {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
