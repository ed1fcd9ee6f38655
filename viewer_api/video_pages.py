"""Web pages for surgical video: search, multi-view wall (issue 8) (routes)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
pages = APIRouter()
