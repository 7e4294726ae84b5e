"""Command line: `python -m npuport inspect PATH --json`, the stages outside Snakemake, and the config reference.

Option defaults and help come from the config schema (workflow/schemas/config.schema.yaml), the same
values a pipeline run uses. Results go to stdout; progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from npuport.core.errors import NpuportError, one_line
from npuport.core.settings import (
    FuseSettings,
    IntrospectSettings,
    config_reference_markdown,
    schema_defaults,
    section_schema,
)


def _inspect(args: argparse.Namespace) -> None:
    from npuport.weights.introspect import introspect_checkpoint

    settings = IntrospectSettings.from_config({"sample_rows": args.sample_rows})
    document = introspect_checkpoint(args.path, sample_rows=settings.sample_rows)
    if args.json:
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return
    # values come from the checkpoint's own files: control characters are escaped, never sent to the terminal
    for field, value in document["derived"].items():
        if field == "qat":
            print(one_line(f"{'ternary QAT':24} {value.get('summary')}"))
        elif field != "ternary":
            print(one_line(f"{field:24} {value}"))
    ternary = document["derived"]["ternary"]
    print(one_line(f"{'ternary':24} {ternary['status']} (group size {ternary['group_size']})"))
    for m in document["mismatches"]:
        print(one_line(f"mismatch: {m['field']}: config says {m['declared']}, weights say {m['derived']}"))
    for ambiguity in document["ambiguities"]:
        print(one_line(f"ambiguous: {ambiguity['field']}: {ambiguity['reason']} candidates {ambiguity['candidates']}"))


def _fuse(args: argparse.Namespace) -> None:
    from pathlib import Path

    from npuport.core.paths import check_output_dir
    from npuport.weights.fuse import fuse
    from npuport.weights.introspect import introspect_checkpoint
    from npuport.weights.repair_config import repair
    from npuport.weights.tokenizer_check import check_checkpoint_tokenizer

    settings = FuseSettings.from_config(
        {"mode": args.mode, "group_size": args.group_size, "max_shard_size": args.max_shard_size,
         "dtype": args.dtype, "minicpm": args.minicpm}
    )  # fmt: skip
    check_output_dir(args.out, source=args.path, force=args.force)  # before anything is read or written
    introspection = introspect_checkpoint(args.path, sample_rows=IntrospectSettings.from_config().sample_rows)
    config, _ = repair(Path(args.path) / "config.json", introspection, args.trust_remote_code)
    check_checkpoint_tokenizer(args.path, config, args.trust_remote_code)
    document = fuse(
        args.path,
        config,
        introspection,
        args.out,
        mode=settings.mode,
        group_size=settings.group_size,
        max_shard_size=settings.max_shard_bytes,
        dtype=settings.dtype,
        minicpm=settings.minicpm,
        trust_remote_code=args.trust_remote_code,
    )
    print(document["decision"])
    print(f"wrote {args.out}: {len(document['shards'])} shard(s), {document['total_bytes']} bytes")


def _config_docs(args: argparse.Namespace) -> None:
    sys.stdout.write(config_reference_markdown())


def _config_option(parser: argparse.ArgumentParser, section: str, key: str, **kwargs) -> None:
    """``--key`` with its default, help and choices from the schema's ``section.key``."""
    schema = section_schema(section)["properties"][key]
    default = schema_defaults(section)[key]
    if "enum" in schema:
        kwargs.setdefault("choices", schema["enum"])
    help_text = f"{schema['description'].replace('%', '%%')} (config: {section}.{key}; default: %(default)s)"
    parser.add_argument(f"--{key.replace('_', '-')}", default=default, help=help_text, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npuport", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="derive the architecture of a checkpoint directory from its weights")
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true", help="print the introspection document as JSON")
    _config_option(inspect, "introspect", "sample_rows", type=int)
    inspect.set_defaults(run=_inspect)
    fuse = commands.add_parser("fuse", help="repair the config and fuse a checkpoint into a Hugging Face model dir")
    fuse.add_argument("path")
    fuse.add_argument("out")
    _config_option(fuse, "fuse", "mode")
    _config_option(fuse, "fuse", "group_size", type=int)
    _config_option(fuse, "fuse", "max_shard_size")
    _config_option(fuse, "fuse", "dtype")
    _config_option(fuse, "fuse", "minicpm")
    fuse.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with the checkpoint")
    fuse.add_argument(
        "--force", action="store_true", help="replace OUT if it exists and is not empty (never the source or cwd)"
    )
    fuse.set_defaults(run=_fuse)
    docs = commands.add_parser(
        "config-docs", help="print the config reference (config/README.md) generated from the config schema"
    )
    docs.set_defaults(run=_config_docs)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("npuport").setLevel(logging.INFO)
    # transformers' own notices (e.g. about a checkpoint's rope fields) are not the CLI's output: errors only
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        parser = build_parser()
    except NpuportError as exc:  # the schema is missing
        print(f"npuport: error: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except NpuportError as exc:
        print(f"npuport {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
