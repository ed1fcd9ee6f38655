"""The scrub job: re-read every stored copy, check it, repair it from a good one, report.

Three passes, each over its index table in batches by primary key (never all rows at once):

- every hot instance: each copy of its blob (every replica of every volume that holds it) is
  read and checked against ``Instance.sha256``, sealed blobs once unsealed with the study's
  data key; cold instances have no hot blob and are checked through their bundle;
- every cold series bundle in the cold store, against ``SeriesTier.cold_sha256``;
- the blob kept by every ingest conflict.

A copy that is missing or damaged is rewritten from an intact one where one exists (another
replica, or another volume holding the same blob). Optionally (``orphans``), every key of the
stores is listed and those no index row references are reported, never deleted: a blob being
ingested at that moment shows as one too.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

from sqlalchemy import Select, func, select

from cloud.archive import Archive
from cloud.blob_replicas import ReplicaState, ReplicatedBlobStore
from cloud.blobstore import BlobDamagedError, BlobStore
from cloud.crypto import AES256GCM, KeyDestroyedError, SealedBlobError, unseal
from cloud.errors import ArchiveError, InstanceNotFoundError
from cloud.ingest import is_sealed_key
from cloud.models import IngestConflict, Instance, Series, SeriesTier, Study, StudyKey
from cloud.volumes import VolumeSet

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
Check = Callable[[bytes], bool | None]  # intact, damaged, or cannot tell
BATCH_SIZE = 500

_GOOD, _UNVERIFIED = ReplicaState.GOOD, ReplicaState.UNVERIFIED
_MISSING, _DAMAGED = ReplicaState.MISSING, ReplicaState.DAMAGED
_UNREACHABLE = ReplicaState.UNREACHABLE


@dataclass(frozen=True)
class ScrubProblem:
    """One thing found wrong: a copy missing, damaged or unreadable, or an orphan blob."""

    what: str  # "missing", "damaged", "unreachable", "unverifiable", "orphan"
    subject: str  # "instance", "bundle", "conflict", "blob"
    key: str
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    replica: str = ""  # the replica or volume of the copy ("" when no copy exists at all)
    detail: str = ""
    repaired: bool = False

    def line(self) -> str:
        uids = " ".join(
            f"{name} {uid}"
            for name, uid in (
                ("sop", self.sop_instance_uid),
                ("series", self.series_instance_uid),
                ("study", self.study_instance_uid),
            )
            if uid
        )
        where = f" on {self.replica}" if self.replica else ""
        outcome = ": repaired" if self.repaired else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.what.upper()} {self.subject} {uids} {self.key}{where}{detail}{outcome}"


@dataclass
class ScrubReport:
    """What a scrub found. ``checked``, ``ok``, ``unrepairable`` and ``skipped`` count objects
    (instances, bundles, conflict blobs); ``missing``, ``damaged``, ``repaired`` and
    ``unreachable`` count copies (one per replica)."""

    checked: int = 0
    ok: int = 0
    repaired: int = 0
    missing: int = 0
    damaged: int = 0
    unrepairable: int = 0
    unreachable: int = 0
    skipped: int = 0  # destroyed studies (unreadable on purpose), or moved while scrubbed
    bytes_read: int = 0
    instances: int = 0
    bundles: int = 0
    conflicts: int = 0
    orphans: int | None = None  # None: not looked for
    problems: list[ScrubProblem] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 clean (or everything repaired), 1 problems left, 2 something unrepairable.
        Orphans do not count: they are wasted space, not damage."""
        if self.unrepairable:
            return 2
        left = [p for p in self.problems if not p.repaired and p.what != "orphan"]
        return 1 if left else 0

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["exit_status"] = self.exit_status
        return document

    def as_text(self) -> str:
        lines = [problem.line() for problem in self.problems]
        orphans = "" if self.orphans is None else f", {self.orphans} orphan blobs"
        lines.append(
            f"scrub: {self.checked} checked ({self.instances} instances, {self.bundles} "
            f"bundles, {self.conflicts} conflict blobs), {self.ok} ok, {self.repaired} copies "
            f"repaired, {self.missing} missing, {self.damaged} damaged, {self.unrepairable} "
            f"unrepairable, {self.unreachable} unreachable, {self.skipped} skipped"
            f"{orphans}; {self.bytes_read} bytes read"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class _Subject:
    kind: str
    key: str
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""


@dataclass(frozen=True)
class _Copy:
    volume: int
    name: str
    store: BlobStore
    state: ReplicaState
    detail: str


class Scrubber:
    """Checks (and repairs) everything an archive stores; see the module docstring."""

    def __init__(self, archive: Archive, batch_size: int = BATCH_SIZE) -> None:
        self.archive = archive
        self.batch_size = batch_size
        self._sessions = archive.sessions

    def run(
        self,
        progress: Progress | None = None,
        *,
        repair: bool = True,
        limit: int | None = None,
        orphans: bool = False,
    ) -> ScrubReport:
        """Scrub the archive.

        Parameters
        ----------
        progress
            Called with (objects done, objects in all) as the scrub goes.
        repair
            Rewrite missing and damaged copies from an intact one (else only report them).
        limit
            Check at most this many objects (instances first, then bundles, then conflicts).
        orphans
            Also list every blob of the stores and report those nothing references.
        """
        report = ScrubReport()
        total = self._count(limit)
        update = progress or (lambda _done, _total: None)
        cold = getattr(self.archive, "cold_blobs", None)
        passes = (
            (self._instances, self.archive.blobs),
            (self._bundles, cold),
            (self._conflicts, self.archive.blobs),
        )
        for rows, store in passes:
            if limit is not None and report.checked >= limit:
                break
            for subject, check in rows(report):
                if self._check(store, subject, check, report, repair):
                    report.checked += 1
                    _count_kind(report, subject.kind)
                else:
                    report.skipped += 1  # tiered, restored or deleted while we read it
                update(report.checked + report.skipped, total)
                if limit is not None and report.checked >= limit:
                    break
        if orphans:
            self._orphans(report, cold, update)
        return report

    # -- the passes ----------------------------------------------------------------------

    def _count(self, limit: int | None) -> int:
        with self._sessions() as session:
            total = sum(
                session.scalar(select(func.count()).select_from(statement.subquery())) or 0
                for statement in (
                    select(Instance.pk).where(Instance.tier == "hot"),
                    select(SeriesTier.series_pk).where(SeriesTier.cold_key != ""),
                    select(IngestConflict.pk),
                )
            )
        return total if limit is None else min(total, limit)

    def _batches(self, statement: Select[*tuple[Any, ...]], pk: Any) -> Iterator[Sequence[Any]]:
        """The rows of ``statement`` (whose first column is ``pk``), a batch per session."""
        after: Any = None
        while True:
            page = statement.order_by(pk).limit(self.batch_size)
            if after is not None:
                page = page.where(pk > after)
            with self._sessions() as session:
                rows = session.execute(page).all()
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    def _instances(self, report: ScrubReport) -> Iterator[tuple[_Subject, Check | None]]:
        statement = (
            select(
                Instance.pk,
                Instance.sop_instance_uid,
                Instance.blob_key,
                Instance.sha256,
                Instance.encryption,
                Series.series_instance_uid,
                Study.study_instance_uid,
            )
            .join(Series, Instance.series_pk == Series.pk)
            .join(Study, Series.study_pk == Study.pk)
            .where(Instance.tier == "hot")
        )
        for rows in self._batches(statement, Instance.pk):
            destroyed = self._destroyed({row.study_instance_uid for row in rows})
            for row in rows:
                subject = _Subject(
                    "instance",
                    row.blob_key,
                    row.sop_instance_uid,
                    row.study_instance_uid,
                    row.series_instance_uid,
                )
                if row.study_instance_uid in destroyed:
                    report.skipped += 1
                elif not row.encryption:
                    yield subject, _digest_check(row.sha256)
                elif row.encryption != AES256GCM:
                    yield subject, None  # unknown encryption: presence only
                elif check := self._sealed_check(subject, row.sha256, report):
                    yield subject, check

    def _bundles(self, _report: ScrubReport) -> Iterator[tuple[_Subject, Check | None]]:
        statement = (
            select(
                SeriesTier.series_pk,
                SeriesTier.cold_key,
                SeriesTier.cold_sha256,
                Series.series_instance_uid,
                Study.study_instance_uid,
            )
            .join(Series, SeriesTier.series_pk == Series.pk)
            .join(Study, Series.study_pk == Study.pk)
            .where(SeriesTier.cold_key != "")
        )
        for rows in self._batches(statement, SeriesTier.series_pk):
            for row in rows:
                subject = _Subject(
                    "bundle",
                    row.cold_key,
                    study_instance_uid=row.study_instance_uid,
                    series_instance_uid=row.series_instance_uid,
                )
                yield subject, _digest_check(row.cold_sha256) if row.cold_sha256 else None

    def _conflicts(self, report: ScrubReport) -> Iterator[tuple[_Subject, Check | None]]:
        statement = (
            select(
                IngestConflict.pk,
                IngestConflict.sop_instance_uid,
                IngestConflict.received_blob_key,
                IngestConflict.received_sha256,
                Study.study_instance_uid,
            )
            .outerjoin(Instance, Instance.sop_instance_uid == IngestConflict.sop_instance_uid)
            .outerjoin(Series, Instance.series_pk == Series.pk)
            .outerjoin(Study, Series.study_pk == Study.pk)
        )
        for rows in self._batches(statement, IngestConflict.pk):
            destroyed = self._destroyed({row.study_instance_uid for row in rows} - {None})
            for row in rows:
                study_uid = row.study_instance_uid or ""
                subject = _Subject(
                    "conflict", row.received_blob_key, row.sop_instance_uid, study_uid
                )
                if study_uid in destroyed:
                    report.skipped += 1
                elif not is_sealed_key(row.received_blob_key):
                    yield subject, _digest_check(row.received_sha256)
                elif not study_uid:  # its instance (and the key to open it) is gone
                    yield subject, None  # presence only
                elif check := self._sealed_check(subject, row.received_sha256, report):
                    yield subject, check

    def _destroyed(self, study_uids: set[str]) -> set[str]:
        if not study_uids:
            return set()
        with self._sessions() as session:
            return set(
                session.scalars(
                    select(StudyKey.study_instance_uid).where(
                        StudyKey.destroyed_at.is_not(None),
                        StudyKey.study_instance_uid.in_(study_uids),
                    )
                )
            )

    def _sealed_check(self, subject: _Subject, sha256: str, report: ScrubReport) -> Check | None:
        """The check of a sealed blob; None (counted, noted) when it cannot be opened."""
        try:
            data_key = self.archive.keys.data_key(subject.study_instance_uid)
        except KeyDestroyedError:
            report.skipped += 1  # destroyed since the batch was read
            return None
        except ArchiveError as exc:
            report.unreachable += 1
            _note(report, subject, "unverifiable", "", f"data key unavailable: {exc.detail}")
            return None

        def check(blob: bytes) -> bool:
            try:
                plain = unseal(data_key, blob, subject.sop_instance_uid)
            except SealedBlobError:
                return False
            return hashlib.sha256(plain).hexdigest() == sha256

        return check

    # -- one object ----------------------------------------------------------------------

    def _check(
        self,
        store: BlobStore | None,
        subject: _Subject,
        check: Check | None,
        report: ScrubReport,
        repair: bool,
    ) -> bool:
        """Check (and repair) one object's copies; False if the index no longer points at it
        (tiered, restored or deleted since its row was read: nothing to report)."""
        if store is None:
            report.unreachable += 1
            _note(report, subject, "unreachable", "", "the archive has no cold store")
            return True
        copies, source = self._read_copies(store, subject.key, check, report)
        holding = {copy.volume for copy in copies if copy.state not in (_MISSING, _UNREACHABLE)}
        # Replicas of volumes holding the blob must all have it; other volumes need not.
        expected = [copy for copy in copies if copy.volume in holding]
        bad = [copy for copy in expected if copy.state in (_MISSING, _DAMAGED)]
        if (bad or not holding) and not self._still_indexed(subject):
            return False
        down = [copy for copy in (expected or copies) if copy.state is _UNREACHABLE]
        for copy in down:
            report.unreachable += 1
            _note(report, subject, "unreachable", copy.name, copy.detail)
        if not holding and not down:
            report.missing += 1
            report.unrepairable += 1
            _note(report, subject, "missing", "", "no copy anywhere")
        elif bad:
            self._mend(subject, bad, source, report, repair)
        elif not down:
            report.ok += 1
        return True

    @staticmethod
    def _mend(
        subject: _Subject,
        bad: list[_Copy],
        source: bytes | None,
        report: ScrubReport,
        repair: bool,
    ) -> None:
        """Report the missing and damaged copies, rewriting them from ``source`` if any."""
        for copy in bad:
            if copy.state is _MISSING:
                report.missing += 1
            else:
                report.damaged += 1
            detail, repaired = copy.detail, False
            if source is None:
                detail = _join(detail, "no intact copy to repair from")
            elif repair:
                try:
                    copy.store.put(subject.key, source)
                    repaired = True
                    report.repaired += 1
                except Exception as exc:
                    detail = _join(detail, f"repair failed: {_detail(exc)}")
            _note(report, subject, copy.state.value, copy.name, detail, repaired=repaired)
        if source is None:
            report.unrepairable += 1

    def _still_indexed(self, subject: _Subject) -> bool:
        """Whether the index still points at the blob as it did when its row was read."""
        if subject.kind == "instance":
            statement = select(Instance.pk).where(
                Instance.sop_instance_uid == subject.sop_instance_uid,
                Instance.blob_key == subject.key,
                Instance.tier == "hot",
            )
        elif subject.kind == "bundle":
            statement = select(SeriesTier.series_pk).where(SeriesTier.cold_key == subject.key)
        else:
            statement = select(IngestConflict.pk).where(
                IngestConflict.received_blob_key == subject.key
            )
        with self._sessions() as session:
            return session.execute(statement.limit(1)).first() is not None

    def _read_copies(
        self, store: BlobStore, key: str, check: Check | None, report: ScrubReport
    ) -> tuple[list[_Copy], bytes | None]:
        """Every copy's state, and the bytes a repair may spread (a verified copy, else
        unverifiable copies that all agree)."""
        copies, good, unverified = [], None, set()
        for index, leaves in enumerate(_layout(store)):
            for name, leaf in leaves:
                state, detail, data = _read(leaf, key, check)
                report.bytes_read += len(data or b"")
                copies.append(_Copy(index, name, leaf, state, detail))
                if state is _GOOD and good is None:
                    good = data
                elif state is _UNVERIFIED and data is not None:
                    unverified.add(data)
        if good is None and len(unverified) == 1:
            good = unverified.pop()
        return copies, good

    # -- orphans -------------------------------------------------------------------------

    def _orphans(self, report: ScrubReport, cold: BlobStore | None, update: Progress) -> None:
        report.orphans = 0
        listed = 0
        stores = [self.archive.blobs]
        if cold is not None and cold is not self.archive.blobs:
            stores.append(cold)
        for store in stores:
            keys = store.keys()
            while chunk := list(islice(keys, self.batch_size)):
                listed += len(chunk)
                for key in sorted(set(chunk) - self._referenced(chunk)):
                    report.orphans += 1
                    _note(report, _Subject("blob", key), "orphan", _name(store), "")
                done = report.checked + report.skipped + listed
                update(done, done)  # no total known: the count goes on

    def _referenced(self, keys: list[str]) -> set[str]:
        with self._sessions() as session:
            found: set[str] = set()
            for column in (
                Instance.blob_key,
                IngestConflict.received_blob_key,
                SeriesTier.cold_key,
            ):
                found.update(session.scalars(select(column).where(column.in_(keys))))
        return found


def _count_kind(report: ScrubReport, kind: str) -> None:
    if kind == "instance":
        report.instances += 1
    elif kind == "bundle":
        report.bundles += 1
    else:
        report.conflicts += 1


def _layout(store: BlobStore) -> list[list[tuple[str, BlobStore]]]:
    """The copies a blob may have: per volume, its replicas."""
    volumes = store.volumes() if isinstance(store, VolumeSet) else [(_name(store), store)]
    return [
        list(volume.replicas) if isinstance(volume, ReplicatedBlobStore) else [(name, volume)]
        for name, volume in volumes
    ]


def _read(
    store: BlobStore, key: str, check: Check | None
) -> tuple[ReplicaState, str, bytes | None]:
    try:
        data = store.get(key)
    except InstanceNotFoundError:
        return _MISSING, "", None
    except BlobDamagedError as exc:
        return _DAMAGED, exc.detail, None
    except ArchiveError as exc:
        return _UNREACHABLE, exc.detail, None
    verdict = None if check is None else check(data)
    if verdict is False:
        digest = hashlib.sha256(data).hexdigest()
        return _DAMAGED, f"{len(data)} bytes, sha256 {digest}, fails its check", data
    return (_GOOD if verdict else _UNVERIFIED), "", data


def _digest_check(sha256: str) -> Check:
    def check(data: bytes) -> bool:
        return hashlib.sha256(data).hexdigest() == sha256

    return check


def _note(
    report: ScrubReport,
    subject: _Subject,
    what: str,
    replica: str,
    detail: str,
    *,
    repaired: bool = False,
) -> None:
    problem = ScrubProblem(
        what=what,
        subject=subject.kind,
        key=subject.key,
        sop_instance_uid=subject.sop_instance_uid,
        study_instance_uid=subject.study_instance_uid,
        series_instance_uid=subject.series_instance_uid,
        replica=replica,
        detail=detail,
        repaired=repaired,
    )
    report.problems.append(problem)
    logger.warning("scrub: %s", problem.line())


def _name(store: BlobStore) -> str:
    return str(getattr(store, "url", type(store).__name__))


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second


def _detail(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, ArchiveError) else f"{type(exc).__name__}: {exc}"
