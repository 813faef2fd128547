"""
Other robots' maps, opened read-only and searched beside the node's own (prior_map_dirs).

The Swarm-SLAM use case: robot 1 closes loops against the map robot 2 made (or its own map of
yesterday, merged or not), without ever writing there. Each directory is read as a snapshot of
its committed generation through the map's own checked loader (manifest, sizes, sha256, FAISS
headers: `PlaceMap.read_only`); no lock is taken and nothing is written, so the robot that owns
the map may keep running and saving it meanwhile (the snapshot stays readable). A map of another
model or descriptor dimension is refused with MapMismatchError naming the directory: its
descriptors cannot be compared with ours.

A match says which prior map it is in (name and directory), the keyframe's id, session, stamp
and pose there, and where that session came from when the map is a merged one; `blob(match)`
gives its stored features, so geometric verification works across robots.
"""
from dataclasses import dataclass
import os
from typing import Iterable, Optional

import numpy as np

from vpr_ros.core.errors import MapError, MapMismatchError
from vpr_ros.map.place_map import PlaceMap
from vpr_ros.map.records import KeyframeRecord


@dataclass(frozen=True, eq=False)
class PriorMatch:
    """A keyframe of a prior map matching a query, with everything needed to use it."""

    map_name: str          # the prior map's name (its directory's name unless given)
    map_dir: str           # absolute directory it was read from
    id: int                # keyframe id in that map
    session: int           # session number in that map
    source: str            # robot/map the session came from (merged maps), else map_name
    score: float           # cosine similarity with the query
    record: KeyframeRecord

    @property
    def stamp_ns(self) -> int:
        return self.record.stamp_ns

    @property
    def pose(self) -> np.ndarray:
        """[tx, ty, tz, qx, qy, qz, qw] in that robot's frame; NaN when it had none."""
        return self.record.pose


def _names(dirs: list[str], names: Optional[Iterable[str]]) -> list[str]:
    """Given names, else the directories' names, made unique with their parent's name."""
    if names is not None:
        out = [str(n) for n in names]
        if len(out) != len(dirs) or len(set(out)) != len(out) or not all(out):
            raise MapError(f'prior map names {out} must be {len(dirs)} distinct non-empty names')
        return out
    base = [os.path.basename(d) or d for d in dirs]
    return [b if base.count(b) == 1 else os.path.join(os.path.basename(os.path.dirname(d)), b)
            for b, d in zip(base, dirs)]


class PriorMaps:
    """Read-only snapshots of other maps of the same model, searched together."""

    def __init__(self, dirs: Iterable[str], fingerprint: str, dim: int,
                 names: Optional[Iterable[str]] = None, verify: bool = True) -> None:
        self.dirs = [os.path.abspath(os.path.expanduser(str(d))) for d in dirs]
        if len(set(self.dirs)) != len(self.dirs):
            raise MapError(f'prior map directories repeat: {self.dirs}')
        self.names = _names(self.dirs, names)
        self.maps: list[PlaceMap] = []
        for d in self.dirs:
            try:
                self.maps.append(PlaceMap.read_only(d, str(fingerprint), int(dim), verify))
            except MapMismatchError as err:
                raise MapMismatchError(f'prior map {d}: {err}') from None
            except MapError as err:
                raise MapError(f'prior map {d} cannot be used: {err}') from None
        self._sources = [m.session_sources() for m in self.maps]

    def __len__(self) -> int:
        """Keyframes in all prior maps together."""
        return sum(len(m) for m in self.maps)

    def search(self, desc: np.ndarray, k: int) -> list[PriorMatch]:
        """
        Find the k best keyframes over all prior maps, best first.

        No temporal exclusion: no keyframe of another map is the robot's own recent past.
        """
        found = []
        for i, m in enumerate(self.maps):
            for r in m.search(desc, k):
                src = self._sources[i].get(r.record.session, {}).get('source', self.names[i])
                found.append(PriorMatch(self.names[i], self.dirs[i], r.id, r.record.session,
                                        src, r.score, r.record))
        found.sort(key=lambda p: -p.score)
        return found[:k]

    def blob(self, match: PriorMatch) -> Optional[bytes]:
        """Return the features stored with a match's keyframe (None when it has none)."""
        return self.maps[self.names.index(match.map_name)].blob(match.id)

    def close(self) -> None:
        """Close the snapshots' database files."""
        for m in self.maps:
            m.close()
