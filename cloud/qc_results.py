"""What QC reviews found: sampled, done, passed and pass rates, per hospital and in total.

Counts only (no study, no patient), so regulators may read them as they read statistics.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from cloud.models import Hospital, QcReview, Study
from cloud.quality_policy import GRADES

DONE = "done"


def qc_results(
    session: Session, *, plan_pk: int | None = None, hospital_pk: int | None = None
) -> dict[str, Any]:
    """Results of one plan's reviews (or all plans'), of one hospital's studies (or all).

    Returns
    -------
    dict
        ``sampled``, ``done``, ``pending``, ``passed``, ``pass_rate`` (passed / done, None
        before any review is done), ``by_hospital`` (the same per hospital) and ``grades``
        (how often each of A-D was given for image and for report quality).
    """
    conditions: list[Any] = []
    if plan_pk is not None:
        conditions.append(QcReview.plan_pk == plan_pk)
    if hospital_pk is not None:
        conditions.append(Study.hospital_pk == hospital_pk)
    done = QcReview.state == DONE
    counts = (
        func.count().label("sampled"),
        func.sum(case((done, 1), else_=0)).label("done"),
        func.sum(case((done & QcReview.passed.is_(True), 1), else_=0)).label("passed"),
    )
    reviews = select().select_from(QcReview).join(Study, Study.pk == QcReview.study_pk)
    rows = session.execute(
        reviews.add_columns(Hospital.hospital_id, Hospital.name, *counts)
        .outerjoin(Hospital, Hospital.pk == Study.hospital_pk)
        .where(*conditions)
        .group_by(Hospital.hospital_id, Hospital.name)
        .order_by(Hospital.hospital_id)
    ).all()
    hospitals = [
        {"hospital_id": h, "hospital_name": n, **_rates(s, d, p)} for h, n, s, d, p in rows
    ]
    grades: dict[str, dict[str, int]] = {}
    for column, key in ((QcReview.image_grade, "image"), (QcReview.report_grade, "report")):
        given = session.execute(
            reviews.add_columns(column, func.count()).where(done, *conditions).group_by(column)
        )
        grades[key] = dict.fromkeys(GRADES, 0) | {str(g): int(n) for g, n in given}
    sums = (sum(h[k] for h in hospitals) for k in ("sampled", "done", "passed"))
    return {**_rates(*sums), "by_hospital": hospitals, "grades": grades}


def _rates(sampled: Any, done: Any, passed: Any) -> dict[str, Any]:
    sampled, done, passed = int(sampled or 0), int(done or 0), int(passed or 0)
    rate = round(passed / done, 4) if done else None
    return {
        "sampled": sampled,
        "done": done,
        "pending": sampled - done,
        "passed": passed,
        "pass_rate": rate,
    }
