"""Where a root is, which roots root refuses (before writing anything), and the file helpers
that never follow a link."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import platformdirs
import pytest
from tests.conftest import EmbeddedRoots

from tutorials.db.embedded import EmbeddedPostgresError, default_root, files
from tutorials.db.embedded import account as account_module
from tutorials.db.embedded.layout import Layout, check_root_is_safe

as_root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the checks apply to root only")


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUTORIALS_HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home"
    monkeypatch.delenv("TUTORIALS_HOME")
    monkeypatch.setattr(account_module, "is_root", lambda: True)
    assert default_root() == Path("/var/lib/tutorials/postgres")
    monkeypatch.setattr(account_module, "is_root", lambda: False)
    monkeypatch.setattr(platformdirs, "user_data_dir", lambda *a, **k: "/home/u/.d")
    assert default_root() == Path("/home/u/.d/postgres")


def _check(root: Path) -> None:
    check_root_is_safe(Layout(root), pwd.getpwnam(account_module.SERVICE_USER).pw_uid)


def _refusal(root: Path, problem: str) -> str:
    return (
        f"refusing to run the embedded PostgreSQL as root in {root}: {problem} (use a "
        "root-owned directory, e.g. TUTORIALS_HOME=/var/lib/tutorials/postgres)"
    )


@as_root_only
def test_a_root_owned_root_under_sticky_tmp_is_accepted(embedded_roots: EmbeddedRoots) -> None:
    _check(embedded_roots.new(initdb=True))  # /tmp is 1777: others cannot rename our entries
    _check(embedded_roots.new(create=False))
    sticky = embedded_roots.new(mode=0o1777)
    _check(sticky)


@as_root_only
def test_a_parent_writable_by_others_is_refused(embedded_roots: EmbeddedRoots) -> None:
    root = embedded_roots.new(create=False, mode=0o777)  # no sticky bit
    with pytest.raises(EmbeddedPostgresError) as caught:
        _check(root)
    assert str(caught.value) == _refusal(
        root, f"{root.parent} is writable by its group or by everyone"
    )


@as_root_only
def test_a_parent_owned_by_another_user_is_refused(
    embedded_roots: EmbeddedRoots, other_user: str
) -> None:
    root = embedded_roots.new(create=False)
    os.chown(root.parent, pwd.getpwnam(other_user).pw_uid, 0)
    with pytest.raises(EmbeddedPostgresError) as caught:
        _check(root)
    assert str(caught.value) == _refusal(root, f"{root.parent} belongs to {other_user}")


@as_root_only
def test_a_link_above_the_root_owned_by_another_user_is_refused(
    embedded_roots: EmbeddedRoots, other_user: str
) -> None:
    target = embedded_roots.new()
    link = target.parent / "link"
    link.symlink_to(target)
    entry = pwd.getpwnam(other_user)
    os.chown(link, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    with pytest.raises(EmbeddedPostgresError) as caught:
        _check(link / "pg")
    assert str(caught.value) == _refusal(link / "pg", f"{link} is a link owned by {other_user}")
    os.chown(link, 0, 0, follow_symlinks=False)
    _check(link / "pg")  # root's own link, in a directory only root can write: fine


@as_root_only
@pytest.mark.parametrize(
    ("entry", "make", "problem"),
    [
        ("port", "link", "{path} is not a plain file (a link?); remove it"),
        ("pgpass", "chmod:0o620", "{path} is writable by its group or by everyone"),
        ("data", "chmod:0o770", "{path} is writable by its group or by everyone"),
        ("log", "link", "{path} is not a directory (a link?); remove it"),
        ("bin-1", "chmod:0o775", "{path} is writable by its group or by everyone"),
    ],
)
def test_entries_of_the_root_are_checked(
    embedded_roots: EmbeddedRoots, entry: str, make: str, problem: str
) -> None:
    root = embedded_roots.new(initdb=True)
    path = root / entry
    if make == "link":
        if path.is_dir():
            os.rename(path, root / "elsewhere")
        else:
            path.unlink(missing_ok=True)
        path.symlink_to("/etc/hostname")
    else:
        if not path.exists():
            path.mkdir()
        path.chmod(int(make.split(":")[1], 8))
    with pytest.raises(EmbeddedPostgresError) as caught:
        _check(root)
    assert str(caught.value) == _refusal(root, problem.format(path=path))


@as_root_only
def test_a_service_dir_owned_by_another_user_is_refused(
    embedded_roots: EmbeddedRoots, other_user: str
) -> None:
    root = embedded_roots.new(initdb=True)
    os.chown(root / "log", pwd.getpwnam(other_user).pw_uid, 0)
    with pytest.raises(EmbeddedPostgresError) as caught:
        _check(root)
    assert str(caught.value) == _refusal(root, f"{root / 'log'} belongs to {other_user}")


# --------------------------------------------------------------------------- files


def _secret(directory: Path) -> Path:
    secret = directory / "secret"
    secret.write_text("precious\n")
    secret.chmod(0o600)
    return secret


def test_read_text_refuses_a_link(tmp_path: Path) -> None:
    (tmp_path / "name").symlink_to(_secret(tmp_path))
    with pytest.raises(EmbeddedPostgresError) as caught:
        files.read_text(tmp_path / "name")
    assert str(caught.value) == (
        f"{tmp_path / 'name'} is a symbolic link; remove it (links are never followed here)"
    )
    assert files.read_text(tmp_path / "missing") is None
    assert files.read_text_from(tmp_path / "name") == "(no log)"


def test_read_text_refuses_a_second_hard_link(tmp_path: Path) -> None:
    os.link(_secret(tmp_path), tmp_path / "name")
    with pytest.raises(EmbeddedPostgresError, match="is not a plain file"):
        files.read_text(tmp_path / "name")
    assert files.read_text_from(tmp_path / "name") == "(log is not a plain file)"


def test_write_atomic_replaces_a_link_and_leaves_its_target(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    (tmp_path / "name").symlink_to(secret)
    files.write_atomic(tmp_path / "name", "new\n", mode=0o600)
    assert secret.read_text() == "precious\n"
    assert not (tmp_path / "name").is_symlink()
    assert (tmp_path / "name").read_text() == "new\n"
    assert (tmp_path / "name").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["name", "secret"]


def test_create_fresh_replaces_a_link_and_leaves_its_target(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    (tmp_path / "name").symlink_to(secret)
    fd = files.create_fresh(tmp_path / "name")
    os.write(fd, b"log\n")
    os.close(fd)
    assert secret.read_text() == "precious\n"
    assert not (tmp_path / "name").is_symlink()
    assert (tmp_path / "name").read_text() == "log\n"
