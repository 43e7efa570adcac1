"""A job's chain keys (on_success, on_failure, on_finish, chain_params, chain_partial_as,
max_chain_depth) and the checks that need every job: names that exist, and no cycle."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jobd.config.errors import ConfigError
from jobd.config.table import Table

CHAIN_KEYS = ("on_success", "on_failure", "on_finish")
PARTIAL_AS = ("success", "failure")
MAX_CHAIN_DEPTH = 10
MAX_CHAIN_DEPTH_LIMIT = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class ChainConfig:
    """What a job's run triggers when it ends, and how."""

    on_success: tuple[str, ...] = ()
    on_failure: tuple[str, ...] = ()
    on_finish: tuple[str, ...] = ()
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # chain_params: the child's own
    partial_as: str = "success"  # chain_partial_as: which of on_success / on_failure a PARTIAL run takes
    max_depth: int = MAX_CHAIN_DEPTH  # max_chain_depth: ancestors a run this job's end makes may have

    def targets(self) -> tuple[tuple[str, str], ...]:
        """(key, job) for every job named, in the order of the keys."""
        return tuple((key, name) for key in CHAIN_KEYS for name in getattr(self, key))


NO_CHAIN = ChainConfig()


def parse_chain(t: Table) -> ChainConfig:
    """The chain keys of a job's table (the job names are checked later, against every job)."""
    lists = {}
    for key in CHAIN_KEYS:
        names = t.strings(key)
        if len(set(names)) != len(names):
            raise ConfigError(f"{t.key(key)}: names a job more than once")
        lists[key] = names
    params = t.get("chain_params", (dict,), {}, "a table")
    if "parent" in params:
        raise ConfigError(f"{t.key('chain_params')}.parent: reserved for the parent run")
    config = ChainConfig(
        on_success=lists["on_success"],
        on_failure=lists["on_failure"],
        on_finish=lists["on_finish"],
        params=dict(params),
        partial_as=t.string("chain_partial_as", "success", choices=PARTIAL_AS),
        max_depth=t.integer("max_chain_depth", MAX_CHAIN_DEPTH, minimum=1, maximum=MAX_CHAIN_DEPTH_LIMIT),
    )
    if config == NO_CHAIN:
        return NO_CHAIN  # one, not one per job
    return config


def check_chains(chains: Mapping[str, ChainConfig]) -> None:
    """Every job a chain names exists, and no chain comes back to where it started (`chains`:
    every job's chain, by job name)."""
    for name, chain in chains.items():
        for key, target in chain.targets():
            if target not in chains:
                raise ConfigError(f"jobs.{name}.{key}: no job named {target!r}")
    cycle = find_cycle(chains)
    if cycle is not None:
        first, second = cycle[0], cycle[1]
        key = next(key for key, target in chains[first].targets() if target == second)
        raise ConfigError(f"jobs.{first}.{key}: chain cycle {' → '.join(cycle)}")


def find_cycle(jobs: Mapping[str, ChainConfig]) -> list[str] | None:
    """A chain that leads back to its start, as the jobs it passes from its first job in name
    order (repeated at the end); None if there is none."""
    done: set[str] = set()
    for start in sorted(jobs):
        if start in done:
            continue
        # Depth first without recursion: 10,000 jobs in one line must not hit the stack limit.
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(_next_jobs(jobs[start]))]
        while stack:
            target = next(stack[-1], None)
            if target is None:
                stack.pop()
                left = path.pop()
                on_path.discard(left)
                done.add(left)
                continue
            if target in on_path:
                ring = path[path.index(target) :]
                first = ring.index(min(ring))  # told from its first job in name order, whatever the search
                return [*ring[first:], *ring[:first], ring[first]]
            if target in done or target not in jobs:
                continue
            path.append(target)
            on_path.add(target)
            stack.append(iter(_next_jobs(jobs[target])))
    return None


def _next_jobs(chain: ChainConfig) -> list[str]:
    return sorted({target for _, target in chain.targets()})


def describe_chain(chain: ChainConfig) -> list[str]:
    """What `jobd check` says of a job's chain, a line per key used, then its options."""
    lines = [f"{key} → {', '.join(getattr(chain, key))}" for key in CHAIN_KEYS if getattr(chain, key)]
    if lines:
        options = [f"PARTIAL counts as {chain.partial_as}", f"max_chain_depth {chain.max_depth}"]
        if chain.params:
            options.append(f"chain_params: {', '.join(sorted(chain.params))}")
        lines.append(f"({'; '.join(options)})")
    return lines


def chains_report(jobs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`jobd check --json`'s chains: each job that has one, by name."""
    report: dict[str, dict[str, Any]] = {}
    for name, job in jobs.items():
        chain: ChainConfig = job.chain
        if chain.targets():
            report[name] = {
                **{key: list(getattr(chain, key)) for key in CHAIN_KEYS},
                "chain_params": dict(chain.params),
                "chain_partial_as": chain.partial_as,
                "max_chain_depth": chain.max_depth,
            }
    return report
