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
