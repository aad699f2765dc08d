"""Stage 1, the config: YAML in, a validated `Config` out, or one error listing every problem.

  schema.py     every key: type, default, range, meaning (the public contract)
  yamlio.py     YAML 1.2 numbers, no duplicate keys, the line of every key
  loading.py    read, apply `--set` overrides, validate, resolve paths and derived defaults
  messages.py   validation errors -> "file, line N: `key` ...; the fix"
  registry.py   `Choice`: a config name tied to its builder (registries live in models/, training/)
  reference.py  the README's config reference, generated from the schema
  starter.py    the commented starter config that `mse-train init` writes

Imports nothing else of mse_train but errors.
"""

from mse_train.config.loading import from_document, load, to_dict, to_yaml
from mse_train.config.schema import Config

__all__ = ["Config", "from_document", "load", "to_dict", "to_yaml"]
