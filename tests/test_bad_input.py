"""The bad-input matrix: every bad input to the sweep runner, the job and the reports gets a clear error that
names what is valid, exit status 2, and nothing is run or written (docs/reliability.md)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.sweep import REPO
from bench.sweep import main as sweep_main
from reports.__main__ import main as reports_main
from tests.conftest import write_tiny_sweep


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_sweep(tmp_path, "m2f,rt_m2f", measure="flops")


SWEEP_CASES = [
    # (extra arguments, what the message must say)
    (["precision=fp8"], "precision='fp8' is not valid; valid choices: fp32, tf32, bf16"),
    (["input.height=abc"], "input.height must be a positive integer, got 'abc'"),
    (["input.batch=0"], "input.batch must be a positive integer, got 0"),
    (["backbone=vit"], "Available options in 'backbone'"),
    (["encoder=proscale", "encoder.trc=bogus"], "encoder.trc='bogus' must be one of 'faithful', 'fixed', 'off'"),
    (["encoder=rt_m2f", "encoder.expansion=abc"], "encoder.expansion='abc' must be float"),
    (["encoder=m2f", "encoder.num_layers=abc"], "encoder.num_layers='abc' must be int"),
    (["encoder=m2f", "encoder.ffn_dim=0"], "encoder.ffn_dim=0 must be >= 1"),
    (["encoder=m2f", "encoder.n_heads=7"], "d_model (256) must be divisible by n_heads (7)"),
    (["seed=abc"], "seed='abc' must be int"),
    (["timing.min_iters=-5"], "timing.min_iters=-5 must be >= 1"),
    (["timing.e2e=maybe"], "timing.e2e='maybe' must be bool"),
    (["energy.sample_period=0"], "energy.sample_period=0 must be >= 0.001"),
    (["measure=speed"], "measure='speed' is not valid; valid choices: memory, flops, error, latency"),
    (["encoder.n_layers=3"], "unknown key 'encoder.n_layers'; valid keys of encoder (m2f): d_model, dropout"),
    (["timing.warmup=3"], "unknown key 'timing.warmup'; valid keys of timing: bootstrap, busy_iters"),
    (["msda_backend=cuda_ext"], "unknown msda_backend 'cuda_ext'; valid choices: pytorch, triton"),
    (["encoder.layers=[1,2"], "bad override"),
    (["encoder=proscale", "encoder.layers=5"], "encoder.layers=5 must be a list of int, e.g. [3,3,3]"),
    (["encoder=proscale", "encoder.trc=null"], "encoder.trc=None must be one of 'faithful', 'fixed', 'off'"),
    (["encoder=proscale", "encoder.trc=FIXED"], "encoder.trc='FIXED' must be one of 'faithful', 'fixed', 'off'"),
    (["encoder=rt_m2f", "encoder.expansion=null"], "encoder.expansion=None must be float"),
    (["encoder=rt_m2f", "encoder.expansion=[1,2]"], "encoder.expansion=[1, 2] must be float"),
    (["~encoder.mask_dim"], "decoder.mask_dim: Interpolation key 'encoder.mask_dim' not found"),
    (["input.num_classes=${nosuch}"], "decoder.num_classes: Interpolation key 'nosuch' not found"),
    (["input.topk_per_image=-1"], "input.topk_per_image=-1 must be an integer >= 1"),
    (["input.thing_ids=abc"], "input.thing_ids='abc' must be a list of integer class ids"),
    (["--max-jobs", "0"], "argument --max-jobs: must be > 0, got 0"),
    (["--max-jobs", "-1"], "argument --max-jobs: must be > 0, got -1"),
    (["--timeout", "0"], "argument --timeout: must be > 0, got 0"),
    (["--timeout", "-1"], "argument --timeout: must be > 0, got -1"),
    (["--timeout", "soon"], "argument --timeout: 'soon' is not a number"),
]


@pytest.mark.parametrize("extra,message", SWEEP_CASES, ids=[" ".join(c[0]) for c in SWEEP_CASES])
def test_bad_sweep_input_is_refused_before_anything_runs(tiny, tmp_path, capsys, extra, message):
    results = tmp_path / "results"
    try:
        code = sweep_main([tiny, "--results", str(results), *extra])
    except SystemExit as err:  # argparse's own errors
        code = err.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err and not results.exists()


def test_an_unknown_sweep_lists_the_valid_ones(capsys, tmp_path):
    assert sweep_main(["no_such_sweep", "--results", str(tmp_path / "r")]) == 2
    assert "valid sweeps: main, batch, cpu, default" in capsys.readouterr().err


def test_a_group_choice_among_fixed_keys_is_refused_with_where_it_belongs(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    text = Path(write_tiny_sweep(tmp_path)).read_text()
    path.write_text(text.replace("measure: memory", "measure: memory\nbackbone: r50"))
    assert sweep_main([str(path), "--results", str(tmp_path / "r")]) == 2
    assert "backbone must go under hydra.sweeper.params" in capsys.readouterr().err


def test_overrides_may_follow_options(tiny, tmp_path, capsys):
    assert sweep_main([tiny, "--dry-run", "encoder=m2f", "--results", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.count("\n") == 1


REPORT_CASES = [
    (["results={tmp}/typo"], "no results store at {tmp}/typo/results.sqlite"),
    (["frobnicate"], "unknown command 'frobnicate'; valid commands: build, collect, export, rebuild"),
    (["report.acc=x"], "unknown option 'report.acc'; valid options: results, report.out"),
]


@pytest.mark.parametrize("args,message", REPORT_CASES, ids=[c[0][0] for c in REPORT_CASES])
def test_bad_report_input_is_refused(tmp_path, capsys, args, message):
    assert reports_main([a.format(tmp=tmp_path) for a in args]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()  # never creates an empty store


def store_with_one_row(tmp_path: Path, variant: str = "m2f") -> Path:
    from bench.store import ResultStore

    results = tmp_path / "results"
    with ResultStore(results / "results.sqlite") as store:
        store.add({"run_id": "1", "config_hash": "a", "status": "ok", "created_at": "1", "variant": variant,
                   "encoder": "m2f", "backbone": "r50", "dataset": "ade20k", "height": 64, "width": 64, "batch": 1,
                   "device": "cpu", "cpu_name": "cpu", "precision": "fp32", "mode": "eager", "gmacs_total": 1.0})
    return results


ACCURACY_CASES = [
    ("", "cannot be read"),
    ("dataset,backbone,variant,value\nade20k,r50,m2f,high\n", "column value must be numeric; line(s) 2 hold ['high']"),
    ("dataset,variant,value\nade20k,m2f,47\n", "lacks columns ['backbone']"),
    (None, "does not exist"),
    ("dataset,backbone,variant,value\nade20k,r50,m2f,47\nade20k,r50,m2f,48\n",
     "lines 2, 3 give more than one value for dataset=ade20k, backbone=r50, variant=m2f"),
    ("folder", "is a folder; name a CSV file"),
]


@pytest.mark.parametrize("content,message", ACCURACY_CASES,
                         ids=["empty", "non-numeric", "missing-column", "absent", "twice", "folder"])
def test_a_bad_accuracy_csv_names_the_file(tmp_path, capsys, content, message):
    results = store_with_one_row(tmp_path)
    csv = tmp_path / "acc.csv"
    if content == "folder":
        csv.mkdir()
    elif content is not None:
        csv.write_text(content)
    assert reports_main(["build", f"results={results}", f"report.accuracy={csv}"]) == 2
    err = capsys.readouterr().err
    assert str(csv) in err and message in err, err


@pytest.mark.parametrize("command,key", [("build", "report.out"), ("export", "export")])
@pytest.mark.parametrize("target,message", [("/dev/null", "is not a folder"),
                                            ("/proc/encbench", "cannot be used as an output folder")])
def test_an_unusable_output_folder_is_named(tmp_path, capsys, command, key, target, message):
    results = store_with_one_row(tmp_path)
    assert reports_main([command, f"results={results}", f"{key}={target}"]) == 2
    err = capsys.readouterr().err
    assert f"{key}={target} {message}" in err and "Traceback" not in err


def test_user_strings_are_escaped_in_markdown_and_html(tmp_path):
    variant = "v | <script>alert(1)</script>"  # a label as a user's own encoder could have it
    results = store_with_one_row(tmp_path, variant)
    csv = tmp_path / "acc.csv"
    csv.write_text(f'dataset,backbone,variant,value,source\nade20k,r50,"{variant}",47.0,"a <b>source</b>"\n')
    out = tmp_path / "rep"
    assert reports_main(["build", f"results={results}", f"report.accuracy={csv}", f"report.out={out}"]) == 0
    md, html = (out / "report.md").read_text(), (out / "index.html").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md and "v \\| &lt;script" in md
    assert "<script>" not in html and "&lt;script&gt;" in html and "<b>source" not in html
    table = [line for line in md.splitlines() if line.startswith("| v ")]
    assert table and all(line.count(" | ") == table[0].count(" | ") for line in table)


@pytest.mark.slow
@pytest.mark.parametrize("override,message", [
    ("encoder.n_layers=3", "unknown key 'encoder.n_layers'; valid keys of encoder (m2f)"),
    ("timing.min_iters=-5", "timing.min_iters=-5 must be >= 1"),
    ("out_dir=/proc/encbench", "out_dir=/proc/encbench cannot be written"),
])
def test_a_single_job_exits_2_and_says_why(tmp_path, override, message):
    done = subprocess.run([sys.executable, "-m", "bench", "backbone=r50", "input.height=64", "input.width=64",
                           f"out_dir={tmp_path}", override], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


JOB_CASES = [c for c in SWEEP_CASES if c[0][0].startswith(("encoder=", "~", "input.num_classes", "input.topk",
                                                             "input.thing"))]


@pytest.mark.parametrize("override,message", JOB_CASES, ids=[" ".join(c[0]) for c in JOB_CASES])
def test_a_single_job_refuses_a_bad_knob_before_measuring_anything(tmp_path, override, message):
    from bench.config import compose
    from bench.job import run_job

    row = run_job(compose(["backbone=r50", "input=ade20k", "input.height=64", "input.width=64",
                           "measure=[flops,memory]", *override]), tmp_path)
    assert row["status"] == "invalid" and message in row["error"], row["error"]
    assert math.isnan(row["params_total"]) and math.isnan(row["gmacs_total"])  # nothing was built or counted
    assert row["config_hash"] and (tmp_path / "result.json").exists()


def test_ctrl_c_in_a_report_is_a_one_line_message(tmp_path, capsys, monkeypatch):
    import reports.build

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reports.build, "build_report", interrupted)
    assert reports_main(["build", f"results={store_with_one_row(tmp_path)}", f"report.out={tmp_path / 'r'}"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
