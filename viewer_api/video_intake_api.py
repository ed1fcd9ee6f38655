"""Surgical video intake over HTTP (issue 8) (routes)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
pages = APIRouter()
