"""Scale benchmark (issue 6): QIDO-RS study search on a PostgreSQL index of 1,000,000 instances.

1. A fresh schema on the PostgreSQL server is migrated by opening an ``Archive`` on it, then
   filled directly with COPY: 50 hospitals, 30,000 patients (Chinese names in Latin and
   ideographic groups), 100,000 studies over 10 years, their series and 1,000,000 instances
   (10 per study on average, by modality), then VACUUM ANALYZE. Table and index sizes are
   measured per instance.
2. ``imaging-cloud serve`` runs on that index; a platform admin and a clinician of the largest
   hospital (whose scope adds the patients' grants) sign in, and each times QIDO-RS
   ``/dicom-web/studies`` over HTTP for typical clinician queries: PatientID, PatientName
   prefix in Latin (``zhang*``, ``zhang^xiao*``) and in characters (``张*``), StudyDate range +
   ModalitiesInStudy. p50/p95/p99 per query type; the same searches in process (the SQL
   alone); EXPLAIN (ANALYZE, BUFFERS) of the slowest request of each type.
3. Ingest: 4 concurrent DCMTK ``storescu`` senders of synthetic CT studies into the node.

Goal (issue 6): p95 < 50 ms. Usage: ``make bench-scale`` or
``.venv/bin/python bench/scale.py [--studies 100000] [--keep-schema]``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import platform
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.run import (  # noqa: E402
    NODELAY_ENV,
    RESULTS_DIR,
    console,
    imaging_cloud_command,
    sign_in,
)
from cloud.archive import Archive  # noqa: E402
from cloud.audit import AuditEntry  # noqa: E402
from cloud.dataset import name_groups  # noqa: E402
from cloud.models import Hospital, Instance, Patient, PatientGrant, Series, Study  # noqa: E402
from cloud.query import Query  # noqa: E402
from cloud.scope import StudyScope  # noqa: E402
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, write_files  # noqa: E402
from tests.support.ports import free_ports  # noqa: E402

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOOPBACK = "127.0.0.1"
GOAL_P95_MS = 50.0
ADMIN = ("scale-admin", "scale-admin-password-0123")
CLINICIAN = ("scale-clinician", "scale-clinician-password-0123")
UID_ROOT = "1.2.826.0.1.3680043.10.1370.9."  # synthetic (imaging_cloud.synthetic's root)
FIRST_DAY = date(2016, 1, 1)
DAYS = 3653  # ten years of study dates
MB = 1_000_000

# (Latin, characters, share of the population in %): the commonest Chinese family names.
FAMILIES = [
    ("Wang", "王", 7.1), ("Li", "李", 7.0), ("Zhang", "张", 6.7), ("Liu", "刘", 5.4),
    ("Chen", "陈", 4.5), ("Yang", "杨", 3.1), ("Huang", "黄", 2.2), ("Zhao", "赵", 2.0),
    ("Wu", "吴", 1.9), ("Zhou", "周", 1.9), ("Xu", "徐", 1.5), ("Sun", "孙", 1.5),
    ("Ma", "马", 1.4), ("Zhu", "朱", 1.3), ("Hu", "胡", 1.3), ("Guo", "郭", 1.2),
    ("He", "何", 1.2), ("Lin", "林", 1.1), ("Gao", "高", 1.1), ("Luo", "罗", 1.0),
    ("Zheng", "郑", 1.0), ("Liang", "梁", 0.9), ("Xie", "谢", 0.8), ("Song", "宋", 0.7),
    ("Tang", "唐", 0.7), ("Xu", "许", 0.7), ("Han", "韩", 0.6), ("Feng", "冯", 0.6),
    ("Deng", "邓", 0.6), ("Cao", "曹", 0.6), ("Peng", "彭", 0.5), ("Zeng", "曾", 0.5),
    ("Xiao", "肖", 0.5), ("Tian", "田", 0.4), ("Dong", "董", 0.4), ("Yuan", "袁", 0.4),
    ("Pan", "潘", 0.4), ("Yu", "于", 0.4), ("Jiang", "蒋", 0.4), ("Cai", "蔡", 0.4),
    ("Yu", "余", 0.4), ("Du", "杜", 0.4), ("Ye", "叶", 0.4), ("Cheng", "程", 0.3),
    ("Su", "苏", 0.3), ("Wei", "魏", 0.3), ("Lv", "吕", 0.3), ("Ding", "丁", 0.3),
    ("Ren", "任", 0.3), ("Shen", "沈", 0.3), ("Yao", "姚", 0.3), ("Lu", "卢", 0.3),
    ("Jiang", "姜", 0.3), ("Cui", "崔", 0.3), ("Zhong", "钟", 0.3), ("Tan", "谭", 0.3),
    ("Lu", "陆", 0.3), ("Wang", "汪", 0.2), ("Fan", "范", 0.2), ("Jin", "金", 0.2),
    ("Shi", "石", 0.2), ("Liao", "廖", 0.2), ("Jia", "贾", 0.2), ("Xia", "夏", 0.2),
    ("Fu", "付", 0.2), ("Fang", "方", 0.2), ("Bai", "白", 0.2), ("Zou", "邹", 0.2),
    ("Meng", "孟", 0.2), ("Xiong", "熊", 0.2), ("Qin", "秦", 0.2), ("Qiu", "邱", 0.2),
    ("Yin", "尹", 0.2), ("Xue", "薛", 0.2), ("Yan", "闫", 0.2), ("Duan", "段", 0.2),
    ("Lei", "雷", 0.2), ("Hou", "侯", 0.2), ("Long", "龙", 0.2), ("Shi", "史", 0.2),
    ("Tao", "陶", 0.1), ("He", "贺", 0.1), ("Gu", "顾", 0.1), ("Mao", "毛", 0.1),
    ("Hao", "郝", 0.1), ("Gong", "龚", 0.1), ("Shao", "邵", 0.1), ("Wan", "万", 0.1),
    ("Qian", "钱", 0.1), ("Yan", "严", 0.1), ("Dai", "戴", 0.1), ("Mo", "莫", 0.1),
    ("Kong", "孔", 0.1), ("Xiang", "向", 0.1), ("Tang", "汤", 0.1),
]  # fmt: skip
GIVEN = [
    ("Wei", "伟"), ("Fang", "芳"), ("Na", "娜"), ("Min", "敏"), ("Jing", "静"), ("Li", "丽"),
    ("Qiang", "强"), ("Lei", "磊"), ("Jun", "军"), ("Yang", "洋"), ("Yong", "勇"), ("Yan", "艳"),
    ("Jie", "杰"), ("Juan", "娟"), ("Tao", "涛"), ("Ming", "明"), ("Chao", "超"), ("Xiu", "秀"),
    ("Xia", "霞"), ("Ping", "平"), ("Gang", "刚"), ("Gui", "桂"), ("Ying", "英"), ("Hua", "华"),
    ("Jian", "建"), ("Guo", "国"), ("Yu", "玉"), ("Lan", "兰"), ("Zhi", "志"), ("Wen", "文"),
    ("Hai", "海"), ("Hong", "红"), ("Xiao", "小"), ("Dong", "东"), ("Xiao", "晓"), ("Dan", "丹"),
    ("Peng", "鹏"), ("Hui", "辉"), ("Yu", "宇"), ("Hao", "浩"), ("Xin", "欣"), ("Ting", "婷"),
    ("Xue", "雪"), ("Lin", "琳"), ("Jia", "佳"), ("Zi", "子"), ("Han", "涵"), ("Rui", "睿"),
]  # fmt: skip


@dataclass(frozen=True)
class Kind:
    """A kind of study: its share, series count range, relative size, and instance shape."""

    modality: str
    share: float
    series: tuple[int, int]
    mean_instances: float
    sop_class_uid: str
    transfer_syntax_uid: str
    rows: int
    columns: int
    bytes_per_pixel: int
    description: str


EXPLICIT_LE, J2K_LOSSLESS, JPEG_BASELINE = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50",
)  # fmt: skip
KINDS = [
    Kind("CT", 28, (1, 4), 20, "1.2.840.10008.5.1.4.1.1.2", EXPLICIT_LE, 512, 512, 2, "CT CHEST"),
    Kind("MR", 14, (3, 7), 25, "1.2.840.10008.5.1.4.1.1.4", EXPLICIT_LE, 320, 320, 2, "MR BRAIN"),
    Kind("DX", 22, (1, 2), 2, "1.2.840.10008.5.1.4.1.1.1.1", J2K_LOSSLESS, 3000, 2500, 1, "CHEST"),
    Kind("CR", 6, (1, 1), 2, "1.2.840.10008.5.1.4.1.1.1", J2K_LOSSLESS, 2500, 2000, 1, "KNEE"),
    Kind("US", 14, (1, 1), 8, "1.2.840.10008.5.1.4.1.1.6.1", JPEG_BASELINE, 600, 800, 1, "US ABD"),
    Kind("MG", 6, (1, 1), 4, "1.2.840.10008.5.1.4.1.1.1.2", J2K_LOSSLESS, 3328, 2560, 1, "MAMMO"),
    Kind("XA", 3, (2, 5), 10, "1.2.840.10008.5.1.4.1.1.12.1", JPEG_BASELINE, 512, 512, 1, "CORO"),
    Kind("PT", 2, (2, 3), 30, "1.2.840.10008.5.1.4.1.1.128", EXPLICIT_LE, 192, 192, 2, "PET/CT"),
    Kind("NM", 2, (1, 2), 6, "1.2.840.10008.5.1.4.1.1.20", EXPLICIT_LE, 128, 128, 2, "BONE SCAN"),
    Kind("RF", 3, (1, 3), 6, "1.2.840.10008.5.1.4.1.1.12.2", JPEG_BASELINE, 1024, 1024, 1, "RF"),
]  # fmt: skip
QUERY_MODALITIES = ["CT", "CT", "CT", "MR", "MR", "DX", "US", "MG"]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--instances-per-study", type=float, default=10.0, help="average")
    parser.add_argument("--patients", type=int, default=30_000)
    parser.add_argument("--hospitals", type=int, default=50)
    parser.add_argument("--grants", type=int, default=1000, help="active grants to the clinician")
    parser.add_argument("--queries", type=int, default=200, help="timed requests per query type")
    parser.add_argument("--limit", type=int, default=100, help="QIDO limit (0: none)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent storescu processes")
    parser.add_argument("--ingest-studies", type=int, default=2, help="studies per sender")
    parser.add_argument("--ingest-slices", type=int, default=150, help="CT slices per study")
    parser.add_argument("--ingest-size", type=int, default=512, help="CT slice rows/columns")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("IMAGING_CLOUD_TEST_DATABASE_URL", DEFAULT_DATABASE_URL),
    )
    parser.add_argument("--schema", help="use this schema (default: a fresh scale_<hex> one)")
    parser.add_argument("--skip-load", action="store_true", help="the schema is already loaded")
    parser.add_argument("--keep-schema", action="store_true", help="do not drop the schema")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    return parser.parse_args(argv)


# -- schema ---------------------------------------------------------------------------------


def schema_url(base_url: str, schema: str) -> str:
    """The server URL with every connection's search_path set to ``schema``."""
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def libpq_conninfo(base_url: str, schema: str) -> str:
    """The same database for psycopg itself (no SQLAlchemy driver suffix)."""
    url = make_url(base_url).set(drivername="postgresql")
    return schema_url(url.render_as_string(hide_password=False), schema)


def create_schema(base_url: str, schema: str) -> None:
    engine = create_engine(base_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    finally:
        engine.dispose()


def drop_schema(base_url: str, schema: str) -> None:
    engine = create_engine(base_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


# -- synthetic index ------------------------------------------------------------------------


def row_maker(table: Any) -> tuple[list[str], Callable[[dict[str, Any]], tuple[Any, ...]]]:
    """Column names of ``table`` and a function giving a full row from the values we set,
    the models' scalar defaults elsewhere (so a column added later does not break the load)."""
    names, fill = [], []
    for column in table.columns:
        names.append(column.name)
        default = column.default
        if default is not None and default.is_scalar:
            fill.append(default.arg)
        elif column.nullable:
            fill.append(None)
        else:
            fill.append(KeyError)  # must be given

    def make(values: dict[str, Any]) -> tuple[Any, ...]:
        row = []
        for name, default in zip(names, fill, strict=True):
            value = values.get(name, default)
            if value is KeyError:
                raise KeyError(f"{table.name}.{name} needs a value")
            row.append(value)
        return tuple(row)

    return names, make


def weighted_picker(rng: random.Random, weights: Sequence[float]) -> Callable[[], int]:
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    return lambda: bisect.bisect_right(cumulative, rng.random() * total)


@dataclass
class Loaded:
    """What the load made, for choosing query values and reporting."""

    hospitals: int = 0
    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    patient_ids: list[str] = field(default_factory=list)  # of patients with studies
    clinician_hospital_pk: int = 1
    clinician_patient_ids: list[str] = field(default_factory=list)  # reachable by the clinician
    blob_bytes: int = 0  # sum of size_bytes of the synthetic instances


def patient_names(rng: random.Random, count: int) -> Iterator[tuple[str, int]]:
    """``count`` Person Names ``Family^Given=家^名=`` and the index of the family name."""
    pick_family = weighted_picker(rng, [share for _, _, share in FAMILIES])
    for _ in range(count):
        family = pick_family()
        given = [rng.choice(GIVEN) for _ in range(1 if rng.random() < 0.3 else 2)]
        latin = "".join(g[0] for g in given)
        latin = latin[0] + latin[1:].lower() if len(given) == 1 else latin
        han = "".join(g[1] for g in given)
        yield f"{FAMILIES[family][0]}^{latin}={FAMILIES[family][1]}^{han}=", family


def uid(kind: int, *parts: int) -> str:
    return UID_ROOT + f"{kind}." + ".".join(str(p) for p in parts)


def copy_rows(cursor: psycopg.Cursor[Any], table: Any, rows: Iterator[dict[str, Any]]) -> int:
    names, make = row_maker(table)
    count = 0
    statement = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
    with cursor.copy(statement) as copy:
        for values in rows:
            copy.write_row(make(values))
            count += 1
    return count


def load_index(conninfo: str, args: argparse.Namespace, progress: Progress) -> Loaded:
    """Fill the migrated schema with the synthetic region; VACUUM ANALYZE at the end."""
    rng = random.Random(args.seed)
    loaded = Loaded()
    now = datetime.now(UTC)
    stamp = now.isoformat()
    with psycopg.connect(conninfo) as connection, connection.cursor() as cursor:
        started = time.perf_counter()
        hospital_weights = [1 / (k + 1) ** 0.8 for k in range(args.hospitals)]  # a few big ones
        loaded.hospitals = copy_rows(
            cursor,
            Hospital.__table__,
            (
                {
                    "pk": k + 1,
                    "hospital_id": f"H{k + 1:02d}",
                    "name": f"Synthetic hospital {k + 1}",
                    "credential_sha256": secrets.token_hex(32),
                    "ae_title": f"H{k + 1:02d}GW",
                    "created_at": stamp,
                }
                for k in range(args.hospitals)
            ),
        )
        pick_hospital = weighted_picker(rng, hospital_weights)
        home = [pick_hospital() + 1 for _ in range(args.patients)]
        task = progress.add_task("patients", total=args.patients)

        def patient_rows() -> Iterator[dict[str, Any]]:
            for index, (name, _) in enumerate(patient_names(rng, args.patients)):
                alphabetic, ideographic, phonetic = name_groups(name)
                born = FIRST_DAY - timedelta(days=rng.randrange(4 * 365, 90 * 365))
                yield {
                    "pk": index + 1,
                    "patient_id": f"P{index + 1:08d}",
                    "issuer_of_patient_id": "",
                    "patient_name": name,
                    "patient_name_alphabetic": alphabetic,
                    "patient_name_ideographic": ideographic,
                    "patient_name_phonetic": phonetic,
                    "patient_birth_date": born.strftime("%Y%m%d"),
                    "patient_sex": rng.choice("MF"),
                }
                progress.advance(task)

        loaded.patients = copy_rows(cursor, Patient.__table__, patient_rows())
        loaded.seconds["patients"] = time.perf_counter() - started
        loaded.studies, loaded.series, loaded.instances = _load_studies(
            cursor, args, rng, home, pick_hospital, stamp, loaded, progress
        )
        loaded.seconds["studies+series+instances"] = (
            time.perf_counter() - started - loaded.seconds["patients"]
        )
        _load_grants(cursor, args, rng, loaded, now)
        for table in ("hospitals", "patients", "studies", "series", "instances", "patient_grants"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), "
                f"(SELECT max(pk) FROM {table}))"
            )
        connection.commit()
        loaded.seconds["copy"] = time.perf_counter() - started
    vacuum_started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE) hospitals, patients, studies, series, instances")
        connection.execute("VACUUM (ANALYZE) patient_grants")
    loaded.seconds["vacuum_analyze"] = time.perf_counter() - vacuum_started
    return loaded


def _study_plan(args: argparse.Namespace, rng: random.Random) -> tuple[list[int], list[int]]:
    """Kind of each study and its instance count (at least 1, average as asked)."""
    pick_kind = weighted_picker(rng, [k.share for k in KINDS])
    kinds = [pick_kind() for _ in range(args.studies)]
    weights = [KINDS[k].mean_instances * rng.lognormvariate(0, 0.8) for k in kinds]
    extra = max(0, round(args.studies * args.instances_per_study) - args.studies)
    scale = extra / sum(weights)
    counts = [1 + int(w * scale + rng.random()) for w in weights]  # stochastic rounding
    return kinds, counts


def _split(rng: random.Random, total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    cuts = sorted(rng.sample(range(1, total), parts - 1)) if parts > 1 else []
    return [b - a for a, b in itertools.pairwise([0, *cuts, total])]


def _load_studies(
    cursor: psycopg.Cursor[Any],
    args: argparse.Namespace,
    rng: random.Random,
    home: list[int],
    pick_hospital: Callable[[], int],
    stamp: str,
    loaded: Loaded,
    progress: Progress,
) -> tuple[int, int, int]:
    kinds, counts = _study_plan(args, rng)
    studies: list[dict[str, Any]] = []
    series: list[dict[str, Any]] = []
    series_counts: list[tuple[int, int, Kind]] = []  # (series pk, instances, kind)
    patients_with_studies: set[int] = set()
    clinician_patients: set[int] = set()
    accession = itertools.count(1)
    for index in range(args.studies):
        pk = index + 1
        # A few patients have many studies (chronic illness), most have one to three.
        patient = min(args.patients, 1 + int(args.patients * rng.random() ** 1.6))
        hospital = home[patient - 1] if rng.random() < 0.8 else pick_hospital() + 1
        patients_with_studies.add(patient)
        if hospital == loaded.clinician_hospital_pk:
            clinician_patients.add(patient)
        day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
        kind = KINDS[kinds[index]]
        when = f"{rng.randrange(7, 22):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        stamp_uid = int(day.strftime("%Y%m%d") + when)
        studies.append(
            {
                "pk": pk,
                "study_instance_uid": uid(1, stamp_uid, pk),
                "patient_pk": patient,
                "hospital_pk": hospital,
                "study_date": day.strftime("%Y%m%d"),
                "study_time": when,
                "accession_number": f"H{hospital:02d}{next(accession):010d}",
                "study_id": str(pk % 10000),
                "study_description": kind.description,
                "referring_physician_name": "Ref^Doctor",
                "department": "RAD",
                "created_at": f"{day.isoformat()} {when[:2]}:{when[2:4]}:{when[4:]}+08",
            }
        )
        split = _split(rng, counts[index], rng.randint(*kind.series))
        for number, instances in enumerate(split, start=1):
            modality = kind.modality if not (kind.modality == "PT" and number > 1) else "CT"
            series_pk = len(series) + 1
            series.append(
                {
                    "pk": series_pk,
                    "series_instance_uid": uid(2, stamp_uid, pk, number),
                    "study_pk": pk,
                    "modality": modality,
                    "series_number": number,
                    "series_description": f"{kind.description} {number}",
                    "series_date": day.strftime("%Y%m%d"),
                    "series_time": when,
                    "created_at": stamp,
                }
            )
            series_counts.append((series_pk, instances, kind))
    loaded.patient_ids = [f"P{p:08d}" for p in sorted(patients_with_studies)]
    loaded.clinician_patient_ids = [f"P{p:08d}" for p in sorted(clinician_patients)]
    task = progress.add_task("studies", total=len(studies))
    n_studies = copy_rows(cursor, Study.__table__, _advancing(studies, progress, task))
    task = progress.add_task("series", total=len(series))
    n_series = copy_rows(cursor, Series.__table__, _advancing(series, progress, task))
    total = sum(c for _, c, _ in series_counts)
    task = progress.add_task("instances", total=total)
    n_instances = copy_rows(
        cursor,
        Instance.__table__,
        _instance_rows(series, series_counts, stamp, loaded, progress, task),
    )
    return n_studies, n_series, n_instances


def _advancing(
    rows: list[dict[str, Any]], progress: Progress, task: Any
) -> Iterator[dict[str, Any]]:
    for number, row in enumerate(rows, start=1):
        yield row
        if number % 1000 == 0:
            progress.advance(task, 1000)
    progress.update(task, completed=len(rows))


def _instance_rows(
    series: list[dict[str, Any]],
    series_counts: list[tuple[int, int, Kind]],
    stamp: str,
    loaded: Loaded,
    progress: Progress,
    task: Any,
) -> Iterator[dict[str, Any]]:
    pk = 0
    for (series_pk, count, kind), row in zip(series_counts, series, strict=True):
        prefix = row["series_instance_uid"].replace(UID_ROOT + "2.", UID_ROOT + "3.", 1)
        size = kind.rows * kind.columns * kind.bytes_per_pixel + 2048
        for number in range(1, count + 1):
            pk += 1
            digest = secrets.token_hex(32)
            loaded.blob_bytes += size
            yield {
                "pk": pk,
                "sop_instance_uid": f"{prefix}.{number}",
                "series_pk": series_pk,
                "sop_class_uid": kind.sop_class_uid,
                "instance_number": number,
                "transfer_syntax_uid": kind.transfer_syntax_uid,
                "rows": kind.rows,
                "columns": kind.columns,
                "number_of_frames": None,
                "bits_allocated": 8 * kind.bytes_per_pixel,
                "blob_key": f"objects/{digest[:2]}/{digest[2:4]}/{digest}.dcm",
                "size_bytes": size,
                "sha256": digest,
                "source": "gateway:H01GW",
                "received_at": stamp,
                "encryption": "",
            }
        progress.advance(task, count)


def _load_grants(
    cursor: psycopg.Cursor[Any],
    args: argparse.Namespace,
    rng: random.Random,
    loaded: Loaded,
    now: datetime,
) -> None:
    """Active grants to the clinician's hospital (plus expired and revoked ones)."""
    chosen = rng.sample(loaded.patient_ids, min(len(loaded.patient_ids), args.grants * 3 // 2))
    rows = []
    for number, patient_id in enumerate(chosen):
        state = "active" if number < args.grants else rng.choice(["expired", "revoked"])
        expires = now + timedelta(hours=24) if state != "expired" else now - timedelta(days=3)
        rows.append(
            {
                "pk": number + 1,
                "patient_id": patient_id,
                "hospital_pk": loaded.clinician_hospital_pk,
                "visit": "",
                "method": "qr",
                "granted_at": (now - timedelta(days=5)).isoformat(),
                "expires_at": expires.isoformat(),
                "revoked_at": now.isoformat() if state == "revoked" else None,
            }
        )
        if state == "active":
            loaded.clinician_patient_ids.append(patient_id)
    copy_rows(cursor, PatientGrant.__table__, iter(rows))


# -- sizes ----------------------------------------------------------------------------------


def index_sizes(conninfo: str) -> dict[str, Any]:
    """Heap, index and total bytes of the four index tables, and rows."""
    sizes: dict[str, Any] = {}
    with psycopg.connect(conninfo) as connection:
        for table in ("patients", "studies", "series", "instances"):
            row = connection.execute(
                "SELECT pg_relation_size(c.oid), pg_indexes_size(c.oid), "
                "pg_total_relation_size(c.oid), (SELECT count(*) FROM " + table + ") "
                "FROM pg_class c WHERE c.oid = %s::regclass",
                (table,),
            ).fetchone()
            assert row is not None
            indexes = connection.execute(
                "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) "
                "FROM pg_index WHERE indrelid = %s::regclass ORDER BY 2 DESC",
                (table,),
            ).fetchall()
            sizes[table] = {
                "heap": row[0],
                "indexes": row[1],
                "total": row[2],
                "rows": row[3],
                "index_sizes": dict(indexes),
            }
    return sizes


# -- node -----------------------------------------------------------------------------------


class ScaleNode:
    """``imaging-cloud serve`` on the PostgreSQL schema, with the two bench accounts."""

    def __init__(self, workdir: Path, database_url: str, startup_timeout: float) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.startup_timeout = startup_timeout
        self.http_port, self.dicom_port = free_ports(2)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def admin(self, action: str, *options: str) -> None:
        command = [
            imaging_cloud_command(), "admin", action, "--data-dir", str(self.data_dir),
            "--database-url", self.database_url, *options,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"admin {action}: {result.stderr.strip()[-500:]}")

    def create_accounts(self, hospital_id: str) -> None:
        self.admin("create-user", "--username", ADMIN[0], "--password", ADMIN[1],
                   "--role", "platform_admin")  # fmt: skip
        self.admin("create-user", "--username", CLINICIAN[0], "--password", CLINICIAN[1],
                   "--role", "clinician", "--hospital", hospital_id)  # fmt: skip

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            imaging_cloud_command(), "serve", "--data-dir", str(self.data_dir),
            "--database-url", self.database_url, "--http-host", LOOPBACK,
            "--http-port", str(self.http_port), "--dicom-host", LOOPBACK,
            "--dicom-port", str(self.dicom_port),
        ]  # fmt: skip
        self._log = (self.workdir / "imaging-cloud.log").open("wb")
        # The gateway alert monitor would raise no_heartbeat for 50 silent hospitals: not the
        # subject here, so it checks once a day.
        env = {**os.environ, **NODELAY_ENV, "IMAGING_CLOUD_ALERT_CHECK_SECONDS": "86400"}
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"imaging-cloud exited: {self.log_tail()}")
                try:
                    if client.get(f"{self.base_url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise RuntimeError("imaging-cloud /healthz not 200 in time")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "imaging-cloud.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- queries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryType:
    key: str
    label: str
    values: Callable[[random.Random, list[str]], dict[str, str]]


def _date_range(rng: random.Random, _: list[str]) -> dict[str, str]:
    start = FIRST_DAY + timedelta(days=rng.randrange(DAYS - 30))
    end = start + timedelta(days=rng.randrange(0, 30))
    return {
        "StudyDate": f"{start:%Y%m%d}-{end:%Y%m%d}",
        "ModalitiesInStudy": rng.choice(QUERY_MODALITIES),
    }


def _family(rng: random.Random) -> tuple[str, str]:
    latin, han, _ = rng.choice(FAMILIES)  # uniform: rare names as often as common ones
    return latin, han


QUERY_TYPES = [
    QueryType("patient_id", "PatientID exact", lambda rng, ids: {"PatientID": rng.choice(ids)}),
    QueryType(
        "name_latin", "PatientName zhang*",
        lambda rng, _: {"PatientName": _family(rng)[0].lower() + "*"},
    ),
    QueryType(
        "name_latin_given", "PatientName zhang^xiao*",
        lambda rng, _: {
            "PatientName": f"{_family(rng)[0].lower()}^{rng.choice(GIVEN)[0].lower()}*"
        },
    ),
    QueryType(
        "name_ideographic", "PatientName 张*", lambda rng, _: {"PatientName": _family(rng)[1] + "*"}
    ),
    QueryType("date_modality", "StudyDate range + ModalitiesInStudy", _date_range),
]  # fmt: skip


@dataclass
class Sample:
    query_type: str
    principal: str
    params: dict[str, str]
    ms: float
    results: int


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def plan_requests(
    loaded: Loaded, args: argparse.Namespace
) -> list[tuple[str, QueryType, dict[str, str]]]:
    """Every (principal, query type, values), interleaved so drift hits all types alike."""
    rng = random.Random(args.seed + 1)
    principals = (
        ("platform_admin", loaded.patient_ids),
        ("clinician", loaded.clinician_patient_ids or loaded.patient_ids),
    )
    return [
        (principal, query_type, query_type.values(rng, ids))
        for _ in range(args.queries)
        for principal, ids in principals
        for query_type in QUERY_TYPES
    ]


def time_http(
    node: ScaleNode, tokens: dict[str, str], requests: list[Any], limit: int, progress: Progress
) -> list[Sample]:
    samples = []
    clients = {
        name: httpx.Client(
            base_url=node.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
            timeout=120.0,
        )
        for name, token in tokens.items()
    }
    paging = {"limit": str(limit)} if limit else {}
    task = progress.add_task("QIDO-RS over HTTP", total=len(requests))
    try:
        for principal, _, params in requests[: 2 * len(QUERY_TYPES)]:  # warm-up
            clients[principal].get("/dicom-web/studies", params={**params, **paging})
        for principal, query_type, params in requests:
            started = time.perf_counter()
            response = clients[principal].get("/dicom-web/studies", params={**params, **paging})
            ms = (time.perf_counter() - started) * 1000
            if response.status_code not in (200, 204):
                raise RuntimeError(f"QIDO {params} → {response.status_code}: {response.text[:300]}")
            found = len(response.json()) if response.status_code == 200 else 0
            samples.append(Sample(query_type.key, principal, params, ms, found))
            progress.advance(task)
    finally:
        for client in clients.values():
            client.close()
    return samples


def time_get(node: ScaleNode, path: str, token: str = "", count: int = 100) -> dict[str, float]:
    """p50/p95 in ms of ``GET path`` on one keep-alive connection."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=node.base_url, headers=headers, timeout=30.0) as client:
        client.get(path).raise_for_status()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            client.get(path).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return {"p50": percentile(times, 50), "p95": percentile(times, 95)}


def time_audit_append(archive: Archive, count: int = 200) -> dict[str, float]:
    """What each search's audit entry costs: one append to the hash chain (a row lock on the
    chain head and a commit), without the node's anomaly detector."""
    times = []
    for number in range(count):
        entry = AuditEntry(
            actor_kind="user",
            actor=ADMIN[0],
            action="search",
            role="platform_admin",
            client_address=LOOPBACK,
            detail={"path": "/dicom-web/studies", "query": f"PatientID=P{number:08d}"},
        )
        started = time.perf_counter()
        archive.audit.append(entry)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50": percentile(times, 50), "p95": percentile(times, 95)}


def scope_of(principal: str, hospital_pk: int) -> StudyScope:
    if principal == "platform_admin":
        return StudyScope(everything=True)
    return StudyScope(hospital_pk=hospital_pk, granted_to_hospital=hospital_pk)


def time_in_process(
    archive: Archive, requests: list[Any], limit: int, hospital_pk: int, progress: Progress
) -> list[Sample]:
    """The same searches through ``Archive.search``: the index work without HTTP and audit."""
    samples = []
    task = progress.add_task("the same searches in process", total=len(requests))
    for principal, query_type, params in requests:
        query = Query(
            level="study",
            filters=dict(params),
            limit=limit or None,
            scope=scope_of(principal, hospital_pk),
        )
        started = time.perf_counter()
        found = len(archive.search(query))
        samples.append(
            Sample(query_type.key, principal, params, (time.perf_counter() - started) * 1000, found)
        )
        progress.advance(task)
    return samples


@contextmanager
def captured_statements(archive: Archive) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(archive.engine, "before_cursor_execute", capture)
    try:
        yield statements
    finally:
        event.remove(archive.engine, "before_cursor_execute", capture)


def explain(archive: Archive, sample: Sample, limit: int, hospital_pk: int) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of every statement the search of ``sample`` runs."""
    query = Query(
        level="study",
        filters=dict(sample.params),
        limit=limit or None,
        scope=scope_of(sample.principal, hospital_pk),
    )
    with captured_statements(archive) as statements:
        archive.search(query)
    plans = []
    with archive.engine.connect() as connection:
        for statement, parameters in statements:
            rows = connection.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters
            ).all()
            plans.append(statement + "\n" + "\n".join(row[0] for row in rows))
    return plans


def summarise(samples: list[Sample]) -> list[dict[str, Any]]:
    rows = []
    for principal in ("platform_admin", "clinician"):
        for query_type in QUERY_TYPES:
            chosen = [
                s for s in samples if s.principal == principal and s.query_type == query_type.key
            ]
            if not chosen:
                continue
            times = [s.ms for s in chosen]
            rows.append(
                {
                    "principal": principal,
                    "query_type": query_type.key,
                    "label": query_type.label,
                    "count": len(chosen),
                    "p50": percentile(times, 50),
                    "p95": percentile(times, 95),
                    "p99": percentile(times, 99),
                    "max": max(times),
                    "mean_results": sum(s.results for s in chosen) / len(chosen),
                }
            )
    return rows


# -- ingest ---------------------------------------------------------------------------------


@dataclass
class IngestRun:
    senders: int
    instances: int
    bytes: int
    seconds: float

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds


def make_sender_folders(root: Path, args: argparse.Namespace, count: int, tag: str) -> list[Path]:
    folders = []
    for sender in range(count):
        folder = root / f"{tag}-{sender + 1}"
        for number in range(args.ingest_studies):
            patient = PatientSpec(
                patient_id=f"ING{tag}{sender}{number}",
                patient_name="Zhang^XiaoDong=张^晓东=",
            )
            study = StudySpec(patient=patient, study_date="20260101", accession_number="ING1")
            write_files(
                ct_series(study, slices=args.ingest_slices, size=args.ingest_size),
                folder / f"study-{number}",
            )
        folders.append(folder)
    return folders


def send_concurrently(node: ScaleNode, folders: list[Path]) -> IngestRun:
    """One ``storescu +sd`` per folder, all started together; wall-clock to the last exit."""
    files = {folder: sorted(folder.rglob("*.dcm")) for folder in folders}
    env = {**os.environ, **NODELAY_ENV}
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                "storescu",
                "-v",
                "-aet",
                f"SENDER{index + 1}",
                "-aec",
                "IMAGINGCLOUD",
                "+sd",
                "+r",
                LOOPBACK,
                str(node.dicom_port),
                str(folder),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for index, folder in enumerate(folders)
    ]
    outputs = [process.communicate()[0] for process in processes]
    seconds = time.perf_counter() - started
    for folder, process, output in zip(folders, processes, outputs, strict=True):
        stored = output.count("Received Store Response (Success)")
        if process.returncode != 0 or stored != len(files[folder]):
            tail = "\n".join(output.splitlines()[-10:])
            raise RuntimeError(f"storescu {folder.name}: exit {process.returncode}, "
                               f"{stored}/{len(files[folder])} stored:\n{tail}")  # fmt: skip
    return IngestRun(
        senders=len(folders),
        instances=sum(len(paths) for paths in files.values()),
        bytes=sum(path.stat().st_size for paths in files.values() for path in paths),
        seconds=seconds,
    )


# -- report ---------------------------------------------------------------------------------


def size_rows(sizes: dict[str, Any], instances: int) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for table, size in sizes.items():
        rows.append(
            (
                table,
                f"{size['rows']:,}",
                f"{size['heap'] / MB:,.1f}",
                f"{size['indexes'] / MB:,.1f}",
                f"{size['total'] / MB:,.1f}",
            )
        )
    total = sum(s["total"] for s in sizes.values())
    rows.append(("all four", "", "", "", f"{total / MB:,.1f}"))
    rows.append(("per instance", "", "", "", f"{total / instances:,.0f} B"))
    return rows


def print_report(result: dict[str, Any]) -> None:
    loaded = result["load"]
    console.print()
    console.print(
        f"Loaded {loaded['instances']:,} instances, {loaded['studies']:,} studies, "
        f"{loaded['series']:,} series, {loaded['patients']:,} patients, "
        f"{loaded['hospitals']} hospitals: COPY {loaded['seconds'].get('copy', 0):.0f} s, "
        f"VACUUM ANALYZE {loaded['seconds'].get('vacuum_analyze', 0):.0f} s"
    )
    sizes = Table(title="PostgreSQL size of the index (MB = 10^6 bytes)")
    for column in ("table", "rows", "heap MB", "indexes MB", "total MB"):
        sizes.add_column(column, justify="right" if column != "table" else "left")
    for row in size_rows(result["sizes"], loaded["instances"]):
        sizes.add_row(*row)
    console.print(sizes)
    for key, title in (("http", "QIDO-RS over HTTP"), ("in_process", "Archive.search in process")):
        table = Table(title=f"{title}, ms (limit={result['limit'] or 'none'}; goal p95 < 50 ms)")
        for column in ("principal", "query", "n", "p50", "p95", "p99", "max", "results"):
            table.add_column(
                column, justify="left" if column in ("principal", "query") else "right"
            )
        for row in result[key]:
            met = "green" if row["p95"] < GOAL_P95_MS else "red"
            table.add_row(
                row["principal"], row["label"], str(row["count"]), f"{row['p50']:.1f}",
                f"[{met}]{row['p95']:.1f}[/]", f"{row['p99']:.1f}", f"{row['max']:.1f}",
                f"{row['mean_results']:.1f}",
            )  # fmt: skip
        console.print(table)
    labels = {
        "healthz": "GET /healthz (HTTP floor, no token)",
        "auth_me": "GET /api/auth/me (token + account look-up)",
        "audit_append_in_process": "audit entry append, in process",
    }
    for key, times in result["overheads_ms"].items():
        console.print(f"{labels[key]}: p50 {times['p50']:.1f} ms, p95 {times['p95']:.1f} ms")
    for run in result.get("ingest", []):
        console.print(
            f"Ingest, {run['senders']} concurrent storescu: {run['instances']} instances, "
            f"{run['bytes'] / MB:.0f} MB in {run['seconds']:.1f} s → "
            f"[bold]{run['instances'] / run['seconds']:.1f} inst/s[/], "
            f"{run['bytes'] / MB / run['seconds']:.1f} MB/s"
        )
    before, after = result["environment"]["load_average"], result["load_average_after_queries"]
    console.print(f"load average (1/5/15 min) before the queries {before}, after {after}")
    worst = max(result["http"], key=lambda r: r["p95"])
    verdict = "met" if worst["p95"] < GOAL_P95_MS else "NOT met"
    console.print(f"Goal p95 < {GOAL_P95_MS:.0f} ms: {verdict} (worst: {worst['principal']}, "
                  f"{worst['label']}, p95 {worst['p95']:.1f} ms)")  # fmt: skip


def environment(conninfo: str) -> dict[str, Any]:
    with psycopg.connect(conninfo) as connection:
        settings = {
            name: connection.execute(f"SHOW {name}").fetchone()[0]
            for name in ("server_version", "shared_buffers", "work_mem", "lc_collate")
        }
    return {
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "postgresql": settings,
    }


def save(result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / time.strftime("scale-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    return path


# -- main -----------------------------------------------------------------------------------


def new_progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console,
    )  # fmt: skip


def run(args: argparse.Namespace, workdir: Path, schema: str) -> dict[str, Any]:
    url = schema_url(args.database_url, schema)
    conninfo = libpq_conninfo(args.database_url, schema)
    result: dict[str, Any] = {"args": vars(args), "schema": schema, "limit": args.limit}
    if not args.skip_load:
        create_schema(args.database_url, schema)
        Archive.open(workdir / "migrate", url).close()  # migrates the fresh schema
        console.log(f"schema {schema} migrated; loading {args.studies:,} studies")
        with new_progress() as progress:
            loaded = load_index(conninfo, args, progress)
    else:
        loaded = reload_facts(conninfo)
    result["load"] = {k: v for k, v in asdict(loaded).items() if not k.endswith("patient_ids")}
    result["sizes"] = index_sizes(conninfo)
    result["environment"] = environment(conninfo)
    node = ScaleNode(workdir / "node", url, args.startup_timeout)
    if not args.skip_load:
        node.create_accounts(f"H{loaded.clinician_hospital_pk:02d}")
    node.start()
    archive = Archive.open(workdir / "bench-side", url)
    try:
        tokens = {
            "platform_admin": sign_in(node.base_url, *ADMIN),
            "clinician": sign_in(node.base_url, *CLINICIAN),
        }
        requests = plan_requests(loaded, args)
        with new_progress() as progress:
            http = time_http(node, tokens, requests, args.limit, progress)
            local = time_in_process(
                archive, requests, args.limit, loaded.clinician_hospital_pk, progress
            )
        result["http"], result["in_process"] = summarise(http), summarise(local)
        result["load_average_after_queries"] = os.getloadavg()
        result["overheads_ms"] = {
            "healthz": time_get(node, "/healthz"),
            "auth_me": time_get(node, "/api/auth/me", tokens["platform_admin"]),
            "audit_append_in_process": time_audit_append(archive),
        }
        result["slowest"] = slowest_plans(archive, http, args.limit, loaded.clinician_hospital_pk)
        if not args.skip_ingest:
            result["ingest"] = ingest_runs(node, workdir, args)
    finally:
        archive.close()
        node.stop()
    return result


def slowest_plans(
    archive: Archive, samples: list[Sample], limit: int, hospital_pk: int
) -> list[dict[str, Any]]:
    plans = []
    for query_type in QUERY_TYPES:
        chosen = [s for s in samples if s.query_type == query_type.key]
        worst = max(chosen, key=lambda s: s.ms)
        plans.append({**asdict(worst), "plans": explain(archive, worst, limit, hospital_pk)})
    worst_overall = max(plans, key=lambda p: p["ms"])
    console.rule(
        f"EXPLAIN of the slowest request: {worst_overall['principal']} "
        f"{worst_overall['params']} ({worst_overall['ms']:.1f} ms over HTTP)"
    )
    for plan in worst_overall["plans"]:
        console.print(plan, markup=False, highlight=False)
    return plans


def ingest_runs(node: ScaleNode, workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    console.log(
        f"generating {args.senders + 1} x {args.ingest_studies} CT studies of "
        f"{args.ingest_slices} x {args.ingest_size}² slices"
    )
    single = make_sender_folders(workdir / "ingest", args, 1, "one")
    many = make_sender_folders(workdir / "ingest", args, args.senders, "many")
    runs = []
    for folders in (single, many):
        done = send_concurrently(node, folders)
        console.log(
            f"{done.senders} sender(s): {done.instances} instances in {done.seconds:.1f} s → "
            f"{done.instances_per_s:.1f} inst/s, {done.mb_per_s:.1f} MB/s"
        )
        runs.append({**asdict(done), "instances_per_s": done.instances_per_s,
                     "mb_per_s": done.mb_per_s})  # fmt: skip
    return runs


def reload_facts(conninfo: str) -> Loaded:
    """For --skip-load: the counts and query values from an already loaded schema."""
    loaded = Loaded()
    with psycopg.connect(conninfo) as connection:
        for name in ("hospitals", "patients", "studies", "series", "instances"):
            count = connection.execute(f"SELECT count(*) FROM {name}").fetchone()
            setattr(loaded, name, count[0] if count else 0)
        loaded.patient_ids = [
            row[0]
            for row in connection.execute(
                "SELECT DISTINCT p.patient_id FROM patients p JOIN studies s ON s.patient_pk = p.pk"
            )
        ]
        loaded.clinician_patient_ids = [
            row[0]
            for row in connection.execute(
                "SELECT DISTINCT p.patient_id FROM patients p JOIN studies s "
                "ON s.patient_pk = p.pk WHERE s.hospital_pk = 1 UNION "
                "SELECT patient_id FROM patient_grants WHERE revoked_at IS NULL "
                "AND expires_at > now()"
            )
        ]
    return loaded


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if shutil.which("storescu") is None and not args.skip_ingest:
        console.print("[red]storescu (DCMTK) is needed for the ingest part; --skip-ingest[/]")
        return 1
    schema = args.schema or f"scale_{uuid.uuid4().hex[:10]}"
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
        console.print(f"[red]schema name {schema!r}: lower-case letters, digits, _[/]")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="imaging-cloud-scale-"))
    try:
        result = run(args, workdir, schema)
        print_report(result)
        console.log(f"raw results: {save(result)}")
    except (RuntimeError, OSError, psycopg.Error) as exc:
        console.print(f"[red]bench-scale failed:[/] {exc}")
        return 1
    finally:
        if not args.keep_schema:
            drop_schema(args.database_url, schema)
        else:
            console.log(f"schema kept: {schema} (rerun with --schema {schema} --skip-load)")
        if args.keep:
            console.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
