"""O3's version scheme, `name X.Y.Z-DATA.SPLIT`, as pure functions the registry and trainer share.

X is the release (0 while prerelease, the release number once promoted), Y the I/O interface,
Z the logic (algorithm, library, hyper-parameters, training code), DATA a digest of the
data-retrieval query and SPLIT a digest of the split settings. `next_version` says which part
a registration changes against the latest version of the model: an interface change bumps Y
and resets Z, a logic change bumps Z, a data change keeps X.Y.Z and moves DATA.SPLIT.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

DIGEST_CHARS = 8  # of a sha256, for DATA and SPLIT
VERSION_RE = re.compile(r"^(\d{1,6})\.(\d{1,6})\.(\d{1,6})-([0-9a-f]{8})\.([0-9a-f]{8})$")
DATASET_RE = re.compile(r"^([0-9a-f]{8})\.([0-9a-f]{8})$")
VERSION_FORMAT = "X.Y.Z-DATA.SPLIT, e.g. 0.1.0-1a2b3c4d.5e6f7a8b"
DATASET_FORMAT = "DATA.SPLIT, e.g. 1a2b3c4d.5e6f7a8b"


def canonical(value: Any) -> str:
    """One JSON text per value: sorted keys, no spaces (what every digest is taken over)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value: Any, chars: int | None = None) -> str:
    text = value if isinstance(value, str) else canonical(value)
    full = hashlib.sha256(text.encode()).hexdigest()
    return full[:chars] if chars else full


def normalise_query(query: str) -> str:
    """The query with runs of whitespace made one space and the trailing `;` dropped, so a
    re-indented query is the same DATA."""
    return " ".join(query.split()).rstrip(";").strip()


def data_digest(query: str) -> str:
    return digest(normalise_query(query), DIGEST_CHARS)


def split_digest(settings: dict[str, Any]) -> str:
    return digest(settings, DIGEST_CHARS)


class InvalidVersion(ValueError):
    """A string that is not `X.Y.Z-DATA.SPLIT` (or `DATA.SPLIT` for a dataset)."""


@dataclass(frozen=True, order=True)
class Version:
    release: int  # X
    interface: int  # Y
    logic: int  # Z
    data: str
    split: str

    @classmethod
    def parse(cls, text: str) -> Version:
        match = VERSION_RE.match(text)
        if match is None:
            raise InvalidVersion(f"{text!r} is not a model version: expected {VERSION_FORMAT}")
        x, y, z, data, split = match.groups()
        return cls(int(x), int(y), int(z), data, split)

    @property
    def dataset(self) -> str:
        return f"{self.data}.{self.split}"

    def __str__(self) -> str:
        return f"{self.release}.{self.interface}.{self.logic}-{self.data}.{self.split}"


def parse_dataset(text: str) -> tuple[str, str]:
    match = DATASET_RE.match(text)
    if match is None:
        raise InvalidVersion(f"{text!r} is not a dataset version: expected {DATASET_FORMAT}")
    data, split = match.groups()
    return data, split


def full_version(name: str, version: Version | str) -> str:
    return f"{name} {version}"


@dataclass(frozen=True)
class Lineage:
    """What a model version is made of, as digests: compared to decide the next version."""

    interface: str
    logic: str
    dataset: str  # DATA.SPLIT


def next_version(latest: tuple[Version, Lineage] | None, new: Lineage) -> tuple[Version, str]:
    """The version a registration of `new` gets after `latest` (the model's newest version),
    and the part that changed: `first`, `interface`, `logic`, `data`, or `none` (the same
    lineage as `latest`: its version again)."""
    data, split = parse_dataset(new.dataset)
    if latest is None:
        return Version(0, 0, 1, data, split), "first"
    last, was = latest
    if new.interface != was.interface:
        return Version(last.release, last.interface + 1, 0, data, split), "interface"
    if new.logic != was.logic:
        return Version(last.release, last.interface, last.logic + 1, data, split), "logic"
    if new.dataset != was.dataset:
        return Version(last.release, last.interface, last.logic, data, split), "data"
    return last, "none"


def promoted(version: Version, released: int) -> Version:
    """The release of `version`: X becomes one more than the highest release so far
    (`released`, 0 if none), Y.Z-DATA.SPLIT stay (0.1.0-D.S -> 1.1.0-D.S)."""
    return Version(released + 1, version.interface, version.logic, version.data, version.split)
