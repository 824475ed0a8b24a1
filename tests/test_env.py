"""env.git_rev: the commit of the code that ran, never another repository's."""
import subprocess
import sys

from backends import env


def test_git_rev_is_this_checkouts_commit():
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=env.PROJECT_ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    assert env.git_rev() in (head, f"{head}-dirty")


def test_an_exported_tree_inside_another_repository_has_no_git_rev(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    exported = tmp_path / "infersweep"
    exported.mkdir()
    monkeypatch.setattr(env, "PROJECT_ROOT", exported)
    assert env.git_rev() is None


def test_a_git_archive_export_knows_its_commit(tmp_path):
    """The tree copied to a GPU machine is `git archive HEAD`: REVISION carries the commit."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=env.PROJECT_ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "HEAD", "backends", "runner", "REVISION"], cwd=env.PROJECT_ROOT,
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    out = subprocess.run([sys.executable, "-c", "from backends.env import git_rev; print(git_rev())"],
                         cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()
    assert out == head
