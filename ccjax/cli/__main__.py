"""``python -m ccjax.cli``: the ``ccjax`` command."""
import sys

from ccjax.cli import run

if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
