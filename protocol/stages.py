"""The six stages of one secure-aggregation round: the one vocabulary every layer uses.

A stage is named by the request that opens it and the reply that closes it. The coordinator's
state machine is "collecting the replies of stage X"; a participant's phase is "answered stage X";
the adapters, fault plans and scenario files (`stage = "mask"`) name stages with these values, so
the string a scenario TOML, the console or events.jsonl carries is `Stage.X.value`, unchanged.
Stages are ordered as the protocol runs them (`Stage.MASK < Stage.SIGN`), never alphabetically.
"""

from __future__ import annotations

from enum import StrEnum

from .messages import (
    AdvertiseRequest,
    BundleSet,
    KeyBundle,
    MaskedInput,
    MaskRequest,
    Message,
    ShareBundle,
    ShareDelivery,
    ShareReceipt,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)


class Stage(StrEnum):
    """One protocol stage; the value is its name in files, on the wire of the adapters and on the console."""

    ADVERTISE = "advertise"  # AdvertiseRequest -> KeyBundle
    SHARE = "share"  # BundleSet -> ShareBundle
    RECEIVE = "receive"  # ShareDelivery -> ShareReceipt
    MASK = "mask"  # MaskRequest -> MaskedInput
    SIGN = "sign"  # SurvivorRequest -> SurvivorSignature
    UNMASK = "unmask"  # UnmaskRequest -> UnmaskResponse

    @property
    def index(self) -> int:
        """0 for the first stage, 5 for the last: the protocol's order."""
        return _ORDER[self]

    @classmethod
    def parse(cls, name: object) -> Stage:
        """The stage called `name`; ValueError with one line listing the known names otherwise."""
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(s.value for s in cls)}") from None

    # protocol order, not the str order the StrEnum base would give
    def __lt__(self, other: object) -> bool:
        return self.index < other.index if isinstance(other, Stage) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self.index <= other.index if isinstance(other, Stage) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self.index > other.index if isinstance(other, Stage) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self.index >= other.index if isinstance(other, Stage) else NotImplemented


_ORDER = {s: i for i, s in enumerate(Stage)}

# the request that opens each stage, and the reply that answers it
REQUEST_STAGE: dict[type[Message], Stage] = {
    AdvertiseRequest: Stage.ADVERTISE,
    BundleSet: Stage.SHARE,
    ShareDelivery: Stage.RECEIVE,
    MaskRequest: Stage.MASK,
    SurvivorRequest: Stage.SIGN,
    UnmaskRequest: Stage.UNMASK,
}
REPLY_STAGE: dict[type[Message], Stage] = {
    KeyBundle: Stage.ADVERTISE,
    ShareBundle: Stage.SHARE,
    ShareReceipt: Stage.RECEIVE,
    MaskedInput: Stage.MASK,
    SurvivorSignature: Stage.SIGN,
    UnmaskResponse: Stage.UNMASK,
}
