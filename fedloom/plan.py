"""The plan: everything members agree to before a federation trains.

A plan is plain data (task, rounds, local training, outer optimizer, secure-aggregation
parameters, policy minimums). Its canonical JSON is hashed; the hash travels with every
message and every participant compares it with its own copy, so nobody trains under rules it
did not agree to. Plans are built from TOML (scenario files, federation files) with strict
checking: unknown keys and impossible values are user errors naming the key.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .errors import UserError

if TYPE_CHECKING:
    from protocol.params import ProtocolParams

STRATEGIES = ("fedavg", "fedavgm", "fedadam", "diloco")
PARTITIONS = ("iid", "dirichlet", "shards", "groups")
OPTIMIZERS = ("sgd", "adamw")
TASK_OPTIONS = ("base", "base_sha256", "lora_rank", "context")  # TaskSpec fields that configure the task itself
# (table, key) added after plans were first hashed: left out of to_dict() at their defaults
OPTIONAL_KEYS = (*(("task", k) for k in TASK_OPTIONS), ("training", "gradient_checkpointing"))
MAX_ROUNDS = 100_000  # far beyond any real federation; a typo'd 10**9 would otherwise run (and log) for ever


@dataclass(frozen=True)
class TaskSpec:
    name: str = "digits"  # a registered task or "package.module:object"
    partition: str = "dirichlet"  # simulation only: how the pooled data is split
    alpha: float = 0.3
    shards: int = 2
    seed: int = 0  # data split and partitioning seed
    groups: tuple[str, ...] = ()  # partition = "groups": member i holds groups[i], e.g. "arb+tzm"
    # Language-model tasks (tasks/hflm.py, e.g. "smollm2-lora"); "" / 0 = the task's default. Left at
    # their defaults these keys are not in the plan's JSON, so plans without them keep their hashes.
    base: str = ""  # "smollm2", "tiny", a .gguf file or an HF model directory
    base_sha256: str = ""  # the pin: members refuse a base with another hash (required for a path)
    lora_rank: int = 0
    context: int = 0  # tokens per window

    def group_labels(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(g.split("+")) for g in self.groups)

    def options(self) -> dict[str, str | int]:
        """The task options this spec sets (those not at their defaults)."""
        return {k: getattr(self, k) for k in TASK_OPTIONS if getattr(self, k) != getattr(TaskSpec, k)}

    @property
    def ref(self) -> str:
        """The task with its options as one spec string, ``name?key=value&...`` (sorted; the name alone
        when none is set): how the options reach tasks.get_task, which parses this form."""
        items = sorted((k, str(v)) for k, v in self.options().items())
        return f"{self.name}?{urlencode(items)}" if items else self.name


@dataclass(frozen=True)
class TrainingSpec:
    """Local training on each participant, per round."""

    epochs: int = 1
    steps: int = 0  # > 0: exactly this many local steps per round instead of epochs
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw" (DiLoCo's inner optimizer)
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    # each member keeps its inner optimizer's state (e.g. AdamW moments) from one round to the next,
    # on its own node, as DiLoCo does; false = a fresh optimizer every round
    keep_optimizer_state: bool = False
    # recompute activations during backward to save GPU memory (language-model tasks, CUDA only; ignored on
    # CPU); false is left out of the plan's JSON, so plans without it keep their hashes
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class StrategySpec:
    """The outer optimizer, applied by the coordinator to the (secure) mean update."""

    name: str = "fedavg"
    server_lr: float = 1.0
    server_momentum: float = 0.9  # fedavgm and diloco
    beta1: float = 0.9  # fedadam
    beta2: float = 0.99
    tau: float = 1e-3


@dataclass(frozen=True)
class SecureSpec:
    enabled: bool = True
    bits: int = 16
    clip: float = 4.0  # per-coordinate clip of the update (local - global) before quantization
    threshold: float = 2 / 3
    neighbours: int = 0  # must be 0: the neighbour graph is complete (protocol/SECURITY.md)
    colluders: int = -1  # members that may collude with the coordinator; -1 = ceil(participants / 3) - 1
    min_cohort: int = 3
    max_weight: int = 0  # 0 = the largest that keeps a 32-bit ring


@dataclass(frozen=True)
class ContributionSpec:
    """Governed contributions (see coordinator/contribution.py): public weights, a quality floor
    on a public probe set, an anti-capture cap."""

    enabled: bool = False
    floor: float = 0.0  # highest probe loss (the task's own loss) still aggregated; 0 = no floor
    cap: float = 1.0  # largest share of the sum any member may carry; 1 = no cap
    weighting: str = "examples"  # "examples" (declared counts) or "equal"
    probe: str = "test"  # the public probe set's name
    probe_hash: str = ""  # its SHA-256, filled in when the plan is made; members check it


@dataclass(frozen=True)
class Plan:
    federation: str = "fedloom-simulation"
    participants: int = 10
    rounds: int = 20
    seed: int = 0  # model initialisation and local shuffling
    stage_timeout: float = 600.0  # seconds the coordinator waits for replies at each stage
    reconnect_grace: float = 120.0  # seconds (within a stage) a member's node that missed its heartbeats has to return
    task: TaskSpec = field(default_factory=TaskSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    strategy: StrategySpec = field(default_factory=StrategySpec)
    secure: SecureSpec = field(default_factory=SecureSpec)
    contribution: ContributionSpec = field(default_factory=ContributionSpec)
    app_hash: str = ""  # SHA-256 of the Flower app bundle (FAB) members agreed to run; "" in simulations

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data; keys added after plans were first hashed are left out at their defaults."""
        data = asdict(self)
        for table, key in OPTIONAL_KEYS:
            if data[table][key] == getattr(getattr(Plan(), table), key):
                del data[table][key]
        return data

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical_json().encode()).digest()

    @property
    def hash(self) -> str:
        return self.digest().hex()

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "plan") -> Plan:
        plan = dataclass_from_table(cls, data, where)
        plan.validate()
        return plan

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def with_overrides(self, **kw: Any) -> Plan:
        plan = replace(self, **{k: v for k, v in kw.items() if v is not None})
        plan.validate()
        return plan

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(msg)

        need(bool(self.federation.strip()), "federation name must not be empty")
        need(self.participants >= 1, f"participants must be at least 1 (got {self.participants})")
        need(self.rounds >= 1, f"rounds must be at least 1 (got {self.rounds})")
        need(self.rounds <= MAX_ROUNDS, f"rounds must be at most {MAX_ROUNDS} (got {self.rounds})")
        need(self.stage_timeout > 0, "stage_timeout must be positive")
        need(self.reconnect_grace >= 0, f"reconnect_grace must be >= 0 seconds (got {self.reconnect_grace})")
        t = self.task
        need(t.partition in PARTITIONS, f"task.partition must be one of {', '.join(PARTITIONS)} (got {t.partition!r})")
        need(math.isfinite(t.alpha) and t.alpha > 0, f"task.alpha must be > 0 (got {t.alpha})")
        need(t.shards >= 1, f"task.shards must be at least 1 (got {t.shards})")
        need(
            t.base_sha256 == "" or (len(t.base_sha256) == 64 and all(c in "0123456789abcdef" for c in t.base_sha256)),
            f"task.base_sha256 must be 64 lowercase hex digits (got {t.base_sha256!r})",
        )
        need(t.lora_rank >= 0, f"task.lora_rank must be >= 0 (0 = the task's default; got {t.lora_rank})")
        need(t.context >= 0, f"task.context must be >= 0 (0 = the task's default; got {t.context})")
        tr = self.training
        need(tr.epochs >= 1, f"training.epochs must be at least 1 (got {tr.epochs})")
        need(tr.batch_size >= 1, f"training.batch_size must be at least 1 (got {tr.batch_size})")
        need(tr.lr > 0, f"training.lr must be > 0 (got {tr.lr})")
        need(0 <= tr.momentum < 1, f"training.momentum must be in [0, 1) (got {tr.momentum})")
        need(tr.steps >= 0, f"training.steps must be >= 0 (got {tr.steps})")
        need(tr.optimizer in OPTIMIZERS, f"training.optimizer must be one of {', '.join(OPTIMIZERS)}")
        if t.partition == "groups":
            need(
                len(t.groups) == self.participants,
                f"task.groups names {len(t.groups)} groups for {self.participants} participants",
            )
        s = self.strategy
        need(s.name in STRATEGIES, f"strategy.name must be one of {', '.join(STRATEGIES)} (got {s.name!r})")
        need(s.server_lr > 0, "strategy.server_lr must be > 0")
        need(0 <= s.server_momentum < 1, "strategy.server_momentum must be in [0, 1)")
        sec = self.secure
        if sec.enabled:
            need(2 <= sec.bits <= 30, f"secure.bits must be in 2..30 (got {sec.bits})")
            need(sec.clip > 0, f"secure.clip must be > 0 (got {sec.clip})")
            need(0.5 <= sec.threshold < 1, f"secure.threshold must be in [0.5, 1) (got {sec.threshold})")
            need(sec.min_cohort >= 2, "secure.min_cohort must be at least 2")
            need(
                self.participants >= sec.min_cohort,
                f"secure aggregation needs at least secure.min_cohort = {sec.min_cohort} participants "
                f"(got {self.participants})",
            )
            need(
                sec.neighbours == 0,
                "secure.neighbours must be 0: the neighbour graph is complete (a sparse one could be steered "
                "by the coordinator; see protocol/SECURITY.md)",
            )
            need(sec.colluders >= -1, "secure.colluders must be -1 (auto) or a number of members")
            need(
                sec.max_weight >= 0,
                f"secure.max_weight must be 0 (the largest that fits) or a positive weight (got {sec.max_weight})",
            )
            self._check_protocol_params()

        c = self.contribution
        if c.enabled:
            need(
                self.secure.enabled,
                "contribution needs secure aggregation enabled (public weights are a protocol feature)",
            )
            need(
                c.weighting in ("examples", "equal"),
                f"contribution.weighting must be examples or equal (got {c.weighting!r})",
            )
            need(0 < c.cap <= 1, f"contribution.cap must be in (0, 1] (got {c.cap})")
            need(c.floor >= 0, "contribution.floor must be >= 0 (0 = no floor)")

    def protocol_params(self, vector_length: int, members: int) -> ProtocolParams:
        """The plan's secure-aggregation parameters for a model of `vector_length` parameters: the one
        mapping from plan to protocol, used by validation, the coordinator, members and adversaries."""
        from protocol.params import ProtocolParams

        s = self.secure
        return ProtocolParams.for_federation(
            vector_length,
            members,
            bits=s.bits,
            max_weight=s.max_weight or None,
            clip=s.clip,
            threshold_fraction=s.threshold,
            neighbours=s.neighbours,
            colluders=s.colluders,
            min_cohort=s.min_cohort,
            max_share=self.contribution.cap if self.contribution.enabled else 1.0,
        )

    def _check_protocol_params(self) -> None:
        """The protocol's own rules on these numbers (thresholds, collusion bound, ring), so a plan
        the protocol would refuse is refused here, before anything starts."""
        from protocol.errors import ProtocolError

        try:
            self.protocol_params(1, self.participants)
        except ProtocolError as err:
            raise UserError(f"plan [secure]: {err.detail}") from None

    def train_seed(self, round_: int, member: int) -> int:
        """Shuffling seed of one member in one round: reproducible runs, resumable ones too."""
        return (self.seed * 1_000_003 + round_ * 10_007 + member) % (1 << 31)


def dataclass_from_table(cls: type, data: dict[str, Any], where: str) -> Any:
    """Dataclass from a dict, refusing unknown keys and wrong types with a message naming them."""
    if not isinstance(data, dict):
        raise UserError(f"[{where}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} in [{where}]; known keys: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        default = getattr(defaults, name)
        key = f"{where}.{name}" if where != "plan" else name
        if hasattr(default, "__dataclass_fields__"):
            kwargs[name] = dataclass_from_table(type(default), value, key)
        else:
            kwargs[name] = _coerce(value, default, key)
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    kind = type(default)
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key} must be true or false (got {value!r})")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key} must be an integer (got {value!r})")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{key} must be a number (got {value!r})")
        if not math.isfinite(value):  # TOML has inf and nan; no plan setting means anything with them
            raise UserError(f"{key} must be a finite number (got {value!r})")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise UserError(f"{key} must be a string (got {value!r})")
        return value
    if kind is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{key} must be a list of strings (got {value!r})")
        return tuple(value)
    raise UserError(f"{key}: unsupported value {value!r}")  # pragma: no cover
