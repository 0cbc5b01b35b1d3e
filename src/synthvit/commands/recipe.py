"""`synthvit recipe NAME`: a named recipe's params overrides, as `-S key=value` arguments.

    dvc exp run -n my-demo $(synthvit recipe demo) -S seed=1
    dvc exp run -n mine $(synthvit recipe study-finetune pretrain-colors)   # several, in order
    synthvit recipe --list

Recipes live in recipes.yaml, one source for the Makefile (`make demo`, `make study`, `make ledger`) and
the documentation. A recipe applies to the committed params.yaml: it also prints, at their
committed values, the keys other recipes set, so whatever ran last in the workspace does not
leak into it. A recipe may include others; a later value of a key wins, as with
`-S` (so arguments after `$(synthvit recipe ...)` override it).
"""

from __future__ import annotations

import argparse
import json
import shlex

from synthvit.config import committed_params, load_recipes, recipe_overrides
from synthvit.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="name", help="the recipe; several combine in order (later wins)")
    parser.add_argument("--list", action="store_true", help="list the recipes and what each is for")


def as_argument(key: str, value, quote: bool = False) -> str:
    """`-S key=value`, the value as YAML flow (what `dvc exp run -S` parses): 1e-3, [0.6,1.0], true, text.
    A value with a space is quoted for a shell (`quote`), or refused: `$(synthvit recipe ...)` splits on spaces."""
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, (list, bool)) or value is None else str(value)
    if " " in text and not quote:
        raise UserError(f"recipes.yaml: {key}={value!r} holds a space, which a shell would split; drop the space")
    return f"-S {shlex.quote(f'{key}={text}')}" if quote else f"-S {key}={text}"


def run(args) -> int:
    recipes = load_recipes()
    if args.list or not args.names:
        width = max(map(len, recipes))
        for name, recipe in recipes.items():
            print(f"{name:<{width}}  {recipe.get('about', '')}")
        return 0
    combined = " + ".join(args.names)  # one recipe that includes the named ones, in order
    recipes = {**recipes, combined: {"include": args.names}} if len(args.names) > 1 else recipes
    overrides = recipe_overrides(combined, recipes, baseline=committed_params())
    print(" ".join(as_argument(key, value) for key, value in overrides.items()))
    return 0
