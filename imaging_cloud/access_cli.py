"""`imaging-cloud admin` commands for access: departments, roles, registrations and review.

They act as the operator at the console (a platform admin) and are audited as ``console``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from cloud.archive import Archive
from cloud.audit import AuditEntry
from cloud.directory_admin import Assignment, DirectoryAdmin, console_principal
from cloud.registrations import STATES, Registrations

OpenArchive = Callable[[argparse.Namespace], Archive]


def _audit(archive: Archive, action: str, **detail: Any) -> None:
    entry = AuditEntry(
        actor_kind="system", actor="console", role="platform_admin", action=action, detail=detail
    )
    archive.audit.append(entry)


def _assignment(args: argparse.Namespace) -> Assignment:
    return Assignment(
        role=args.role,
        department=args.department,
        grant=tuple(args.grant),
        revoke=tuple(args.revoke),
    )


def _add_department(archive: Archive, args: argparse.Namespace) -> None:
    admin = DirectoryAdmin(archive.sessions)
    found = admin.add_department(console_principal(), args.hospital, args.code, args.name or "")
    _audit(archive, "change_permissions", operation="add_department", **found.as_dict())
    print(f"department {found.code} ({found.name}) added to {found.hospital_id}")


def _assign_role(archive: Archive, args: argparse.Namespace) -> None:
    change = _assignment(args)
    user = DirectoryAdmin(archive.sessions).update_user(console_principal(), args.username, change)
    _audit(
        archive,
        "change_permissions",
        operation="update_user",
        username=args.username,
        role=user.role,
        grant=args.grant,
        revoke=args.revoke,
    )
    permissions = " ".join(user.as_dict()["permissions"])
    print(f"user {user.username}: {user.role}; permissions: {permissions}")


def _list_registrations(archive: Archive, args: argparse.Namespace) -> None:
    found = Registrations(archive.sessions).listing(console_principal(), args.state)
    for h in found["hospitals"]:
        print(f"hospital {h['id']:>4}  {h['hospital_id']:16} {h['name']}  ({h['contact']})")
    for u in found["users"]:
        print(
            f"user  {u['username']:22} {u['hospital_id'] or '-':12} {u['requested_role']:15} "
            f"{u['full_name']}"
        )


def _review_hospital(archive: Archive, args: argparse.Namespace) -> None:
    registrations = Registrations(archive.sessions)
    if args.approve:
        approval = registrations.approve_hospital(console_principal(), args.id)
        _audit(archive, "review", registration="hospital", id=args.id, decision="approve")
        # Only the credential on stdout, as with add-hospital.
        print(approval.credential)
        return
    hospital_id = registrations.reject_hospital(console_principal(), args.id, args.note or "")
    _audit(
        archive,
        "review",
        registration="hospital",
        id=args.id,
        decision="reject",
        note=args.note or "",
    )
    print(f"hospital registration {args.id} ({hospital_id}) rejected")


def _review_user(archive: Archive, args: argparse.Namespace) -> None:
    registrations = Registrations(archive.sessions)
    if args.approve:
        user = registrations.approve_user(console_principal(), args.username, _assignment(args))
        _audit(
            archive,
            "review",
            registration="user",
            username=args.username,
            decision="approve",
            role=user.role,
        )
        print(f"user {user.username} approved: {user.role} at {user.hospital_id}")
        return
    registrations.reject_user(console_principal(), args.username)
    _audit(
        archive,
        "review",
        registration="user",
        username=args.username,
        decision="reject",
        note=args.note or "",
    )
    print(f"user {args.username} rejected")


def _adjustments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--department", help="a department code of the user's hospital")
    parser.add_argument("--grant", nargs="+", action="extend", default=[], metavar="PERMISSION")
    parser.add_argument("--revoke", nargs="+", action="extend", default=[], metavar="PERMISSION")


def _decision(parser: argparse.ArgumentParser) -> None:
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--approve", action="store_true")
    choice.add_argument("--reject", action="store_true")
    parser.add_argument("--note", help="why (kept in the audit log)")


def add_access_admin_commands(
    actions: Any,
    archive_options: Callable[[argparse.ArgumentParser], None],
    open_archive: OpenArchive,
) -> None:
    """Add the access commands to ``imaging-cloud admin``'s subcommands."""

    def command(
        name: str, help_text: str, run: Callable[[Archive, argparse.Namespace], None]
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        archive_options(parser)

        def handler(args: argparse.Namespace) -> int:
            archive = open_archive(args)
            try:
                run(archive, args)
            finally:
                archive.close()
            return 0

        parser.set_defaults(handler=handler)
        return parser

    department = command("add-department", "add a department to a hospital", _add_department)
    department.add_argument("--hospital", required=True, help="hospital id")
    department.add_argument("--code", required=True, help="matched with studies' department")
    department.add_argument("--name")
    assign = command("assign-role", "change a user's role, department or permissions", _assign_role)
    assign.add_argument("--username", required=True)
    assign.add_argument("--role", help="a role of config/roles.toml")
    _adjustments(assign)
    listing = command("list-registrations", "hospital and user registrations", _list_registrations)
    listing.add_argument("--state", choices=STATES, default="pending")
    hospital = command(
        "review-hospital", "approve (prints the credential) or reject", _review_hospital
    )
    hospital.add_argument("--id", type=int, required=True, help="the registration's id")
    _decision(hospital)
    user = command("review-user", "approve or reject a user's registration", _review_user)
    user.add_argument("--username", required=True)
    user.add_argument("--role", help="default: the role the user asked for")
    _adjustments(user)
    _decision(user)
