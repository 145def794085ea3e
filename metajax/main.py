"""The command line: `python -m metajax.main --config configs/ram_toy.yaml [--set key.sub=value ...]`.

It reads the config and runs the pipeline its `task` names (`metajax.pipelines.TASKS`). A config
error exits with status 2 and a one-line message, before anything is compiled or written.
"""

from __future__ import annotations

import argparse
import sys

from metajax.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metajax.main", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML run config (default: the built-in RaM toy run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set expert_iteration.iterations=2 (repeatable)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
    except ConfigError as e:
        print(f"metajax: config error: {e}", file=sys.stderr)
        return 2
    from metajax import pipelines
    pipelines.run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
