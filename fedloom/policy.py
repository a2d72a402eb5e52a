"""A participant's own policy: what it agrees to, enforced before it sends anything (fail-closed).

Policy file (TOML, owned by the participant; every key optional, defaults are the safe ones):
    require_secure_aggregation = true   # refuse any round that would reveal its update
    min_cohort = 3                      # refuse to upload if fewer members would be aggregated
    max_rounds = 0                      # 0 = no limit
    allowed_tasks = []                  # [] = only the task of the plan in its kit
    max_model_uses = 3                  # masked inputs per model (1 = never train twice on one model;
                                        # higher lets a round that aborted be retried on its model)
Every refusal is a `PolicyRefusal` naming the rule; the ClientApp logs it and returns it to the
coordinator, and the round goes on without this member.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fedloom.errors import UserError
from fedloom.plan import Plan, dataclass_from_table


class PolicyRefusal(Exception):
    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"[{rule}] {detail}")
        self.rule, self.detail = rule, detail


@dataclass(frozen=True)
class Policy:
    require_secure_aggregation: bool = True
    min_cohort: int = 3
    max_rounds: int = 0
    allowed_tasks: tuple[str, ...] = field(default_factory=tuple)
    max_model_uses: int = 3

    @classmethod
    def load(cls, path: str | Path | None) -> Policy:
        if path is None or not Path(path).exists():
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"invalid policy file {path}: {exc}") from exc
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str = "policy") -> Policy:
        data = dict(data)
        tasks = data.pop("allowed_tasks", [])
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise UserError(f"{where}: allowed_tasks must be a list of task names")
        policy = dataclass_from_table(_PolicyFields, data, where)
        if policy.min_cohort < 2:
            raise UserError(f"{where}: min_cohort must be at least 2 (a sum of one is that member's input)")
        if policy.max_rounds < 0:
            raise UserError(f"{where}: max_rounds must be 0 (no limit) or positive")
        if policy.max_model_uses < 1:
            raise UserError(f"{where}: max_model_uses must be at least 1")
        return cls(
            policy.require_secure_aggregation, policy.min_cohort, policy.max_rounds, tuple(tasks), policy.max_model_uses
        )

    def to_toml(self) -> str:
        tasks = ", ".join(f'"{t}"' for t in self.allowed_tasks)
        return (
            f"require_secure_aggregation = {str(self.require_secure_aggregation).lower()}\n"
            f"min_cohort = {self.min_cohort}\nmax_rounds = {self.max_rounds}\nallowed_tasks = [{tasks}]\n"
            f"max_model_uses = {self.max_model_uses}\n"
        )

    def check(self, plan: Plan, agreed: Plan, round_: int, secure: bool) -> None:
        """Raise PolicyRefusal unless this member may take part in `round_` of `plan`."""
        if plan.hash != agreed.hash:
            raise PolicyRefusal(
                "policy.plan-mismatch",
                f"plan {plan.hash[:12]} is not the plan {agreed.hash[:12]} this member agreed to",
            )
        if self.require_secure_aggregation and not secure:
            raise PolicyRefusal("policy.secure-aggregation-required", "refusing to send an update in plaintext")
        allowed = self.allowed_tasks or (agreed.task.name,)
        if plan.task.name not in allowed:
            raise PolicyRefusal("policy.task-not-allowed", f"task {plan.task.name!r} is not in {list(allowed)}")
        if round_ > plan.rounds:
            raise PolicyRefusal("policy.round-beyond-plan", f"round {round_} is beyond the plan's {plan.rounds} rounds")
        if self.max_rounds and round_ > self.max_rounds:
            raise PolicyRefusal("policy.max-rounds", f"round {round_} exceeds this member's limit of {self.max_rounds}")


@dataclass(frozen=True)
class _PolicyFields:
    require_secure_aggregation: bool = True
    min_cohort: int = 3
    max_rounds: int = 0
    max_model_uses: int = 3
