"""env.git_rev: the commit of the code that ran, never another repository's."""
import subprocess

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
