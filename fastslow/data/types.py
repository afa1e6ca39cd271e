"""Records shared by every dataset reader: samples before decoding, problems, and the read report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

Media = Literal["image", "video"]


@dataclass
class Sample:
    """One visual item of a dataset with its captions, before decoding.

    `data` holds the encoded bytes when the format carries them inline (tar shards);
    otherwise the bytes are read from `uri` (a local path or `s3://`). A member of a container file
    has the uri `CONTAINER#MEMBER` (`s3://b/00000.tar#000000012.jpg`, `00000.parquet#000000012`), and
    for a tar member `offset` and `size`: where its bytes lie in the container, for a ranged read.
    """

    id: str
    media: Media
    uri: str
    captions: list[str]
    split: str | None = None
    data: bytes | None = None
    meta: dict = field(default_factory=dict)
    offset: int | None = None
    size: int | None = None


@dataclass
class Problem:
    """An input item that was skipped, and why."""

    id: str
    uri: str
    reason: str


@dataclass
class ReadReport:
    """Accounting of one read: every item read is either used or reported as a problem."""

    source: str = ""
    read: int = 0
    used: int = 0
    problems: list[Problem] = field(default_factory=list)

    def skip(self, id: str, uri: str, reason: str) -> None:
        self.problems.append(Problem(id=id, uri=uri, reason=reason))

    @property
    def balanced(self) -> bool:
        return self.read == self.used + len(self.problems)

    def summary(self) -> str:
        return f"{self.source}: read {self.read} = used {self.used} + reported {len(self.problems)}"

    def to_jsonl(self) -> str:
        return "".join(json.dumps(asdict(p)) + "\n" for p in self.problems)
