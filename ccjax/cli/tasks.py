"""``ccjax tasks``: list the built-in tasks."""
from __future__ import annotations

from ccjax.cli.common import EXIT_OK


def cmd_tasks(ns) -> int:
    from ccjax.tasks import TASKS

    for name, task in TASKS.items():
        print(f"{name:22s} {task.description}")
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("tasks", help="list the built-in tasks")
    p.set_defaults(func=cmd_tasks)
