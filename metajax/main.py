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
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-host run (TPU pod slice or multi-node GPU): jax.distributed.initialize()")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
    except ConfigError as e:
        print(f"metajax: config error: {e}", file=sys.stderr)
        return 2
    if args.distributed:
        import os

        import jax

        from metajax.host import is_main_process
        # On TPU VMs initialize() discovers its peers; GPU launchers export the coordinator address.
        coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
        if coordinator:
            jax.distributed.initialize(coordinator, int(os.environ["JAX_NUM_PROCESSES"]),
                                       int(os.environ["JAX_PROCESS_ID"]))
        else:
            jax.distributed.initialize()
        if not is_main_process():
            # Every process runs the same program; the console shows process 0's (errors still show).
            sys.stdout = open(os.devnull, "w")
    from metajax import pipelines
    pipelines.run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
