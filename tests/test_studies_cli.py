"""`python -m studies`: bad input and interruptions give one line, not a traceback."""
import subprocess
import sys
from pathlib import Path


from studies import __main__ as cli

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, argv, code=1) -> str:
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_out_at_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "metrics.txt"
    f.write_text("x")
    err = _one_line_error(capsys, ["demo", "--out", str(f), "--quick"])
    assert err.startswith("error:") and "is a file, not a folder" in err
    err = _one_line_error(capsys, ["bench", "images", "--out", str(f / "sub"), "--quick"])
    assert "is a file, not a folder" in err


def test_redraw_without_a_finished_run_is_one_line(tmp_path, capsys):
    err = _one_line_error(capsys, ["demo", "--out", str(tmp_path / "new"), "--redraw"])
    assert "metrics.json not found" in err and "without --redraw first" in err
    assert "--threads must be >= 1" in _one_line_error(capsys, ["demo", "--out", str(tmp_path), "--threads", "0"])


def test_ctrl_c_is_one_line(tmp_path, capsys, monkeypatch):
    from studies import demo

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    err = _one_line_error(capsys, ["demo", "--out", str(tmp_path), "--quick"], code=130)
    assert "interrupted" in err and "same command" in err


def test_entry_point_runs_from_the_repository_root():
    r = subprocess.run([sys.executable, "-m", "studies", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "demo" in r.stdout and "bench" in r.stdout


def test_demo_merge_without_family_runs_is_one_line(tmp_path, capsys):
    err = _one_line_error(capsys, ["demo", "--out", str(tmp_path), "--merge"])
    assert "no metrics_<family>.json" in err and "--families first" in err


COMMANDS = (["demo"], ["bench", "images"], ["bench", "cost"], ["fidelity"], ["capacity"], ["estimator"], ["last-step"])


def _help(capsys, argv) -> str:
    import pytest

    with pytest.raises(SystemExit) as done:
        cli.main(argv + ["--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width


def test_help_is_plain_text_with_an_example_per_command(capsys):
    top = _help(capsys, [])
    assert "``" not in top and ":func:" not in top and "::" not in top  # no RST markup
    for cmd in COMMANDS:
        assert f"python -m studies {' '.join(cmd)} " in top, cmd  # each command has an example line
    for sub in ("demo", "fidelity", "capacity", "estimator", "last-step", "bench"):
        text = _help(capsys, [sub])
        assert text.startswith(f"usage: python -m studies {sub} ")
        assert "``" not in text and "examples:" in text and f"python -m studies {sub}" in text.split("examples:")[1]
        assert f"(default: {sub.replace('-', '_')}_out)" in text  # --out's default shown
        assert "(default: False)" not in text and "(default: None)" not in text and "default 1" in text
    demo = _help(capsys, ["demo"])
    seed_help = demo.split("options:")[1].split("--seed SEED")[1].split("--threads")[0]
    assert seed_help.strip() and "(default: 0)" in seed_help  # every flag has help, defaults shown once
    assert demo.count("(default: 1)") == 0  # --threads says its default in its own words: not twice
    assert "(default: 0 1)" in _help(capsys, ["fidelity"])


def test_redraw_prints_the_files_it_wrote(tmp_path, capsys):
    import shutil

    for name in ("metrics.json", "report.md"):
        shutil.copy(ROOT / "docs" / "demo" / name, tmp_path / name)
    assert cli.main(["demo", "--out", str(tmp_path), "--redraw"]) == 0
    out = capsys.readouterr().out
    for name in ("noise_shift.png", "fidelity.png", "report.md"):
        assert str(tmp_path / name) in out and (tmp_path / name).stat().st_size > 0
    shutil.copy(ROOT / "docs" / "capacity" / "capacity.json", tmp_path / "capacity.json")
    shutil.copy(ROOT / "docs" / "capacity" / "report.md", tmp_path / "report.md")
    assert cli.main(["capacity", "--out", str(tmp_path), "--redraw"]) == 0
    assert str(tmp_path / "report.md") in capsys.readouterr().out
    # a redraw changes no number: the committed report plus the redrawn note
    from studies import harness

    committed = (ROOT / "docs" / "capacity" / "report.md").read_text()
    assert (tmp_path / "report.md").read_text() == harness.mark_redrawn(committed, "capacity", figures=(),
                                                                         source="capacity.json")


def test_every_flag_of_every_command_has_help():
    import argparse

    parser = cli._parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
