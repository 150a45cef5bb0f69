"""``mkeval report DIR --html``: a self-contained page whose tables are the Markdown's, a valid PNG
for every plot the results support (and none for what they lack), plotted numbers recomputed from
the result files (numpy, scipy), every mark drawn where its number is, and a headless browser
that loads every plot offline."""

import base64
import csv
import html
import json
import math
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt
from PIL import Image
from scipy import stats

import mkeval
from mkeval import Protocol
from mkeval.cli import main

from helpers import bigram_spec

LM_PLOTS = {"learning_curves", "test_perplexity", "cost_quality", "effective_context"}
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND"]  # any request to a host fails: the page must need none


# --------------------------------------------------------------------------- reading pages and figures
class Page(HTMLParser):
    """Tables (rows of cell texts), tags with their attributes, and the mark spans of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables, self.tags, self.marks = [], [], []
        self._cell = None
        self._span = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "span" and attrs.get("class") == "mark":
            self._span = [attrs.get("title"), ""]

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None
        elif tag == "span" and self._span is not None:
            self.marks.append(tuple(self._span))
            self._span = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._span is not None:
            self._span[1] += data


def markdown_tables(path: Path) -> list[list[list[str]]]:
    """report.md's tables, read by an independent Markdown parser (markdown-it-py, GFM tables)."""
    return Page(MarkdownIt("commonmark").enable("table").render(path.read_text())).tables


def texts(figure) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in figure.findobj(Text)]


def by_name(plots):
    return {p.name: p for p in plots}


def embedded_images(page: Page) -> dict[str, bytes]:
    """figure id -> the PNG bytes of its data: URI."""
    out, figure = {}, None
    for tag, attrs in page.tags:
        if tag == "figure":
            figure = attrs["id"].removeprefix("plot-")
        if tag == "img":
            src = attrs["src"]
            assert src.startswith("data:image/png;base64,"), src[:60]
            out[figure] = base64.b64decode(src.split(",", 1)[1])
    return out


def check_page(directory: Path, expected_plots: set[str]) -> Page:
    """Self-contained, the Markdown's tables, and every expected plot a valid PNG embedded as written."""
    text = (directory / "report.html").read_text()
    page = Page(text)
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
        for name in ("src", "href", "srcset", "action"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//", "file:")), (tag, name, value[:80])
    assert "url(" not in text and "@import" not in text and 'src="http' not in text
    assert page.tables == markdown_tables(directory / "report.md")
    assert {p.stem for p in (directory / "plots").glob("*.png")} == expected_plots
    images = embedded_images(page)
    assert set(images) == expected_plots
    for name, data in images.items():
        path = directory / "plots" / f"{name}.png"
        assert data == path.read_bytes()
        with Image.open(path) as im:
            im.verify()
            assert im.format == "PNG"
        from matplotlib.image import imread

        pixels = imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0.01  # something is drawn
    return page


def t_interval(values):
    """The 95% Student-t interval of the mean (a point when every value is the same)."""
    values = np.asarray(values, float)
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def read_cells(directory: Path) -> list[dict]:
    return [d for d in (json.loads(p.read_text()) for p in directory.glob("*.json")) if "cell_hash" in d]


# --------------------------------------------------------------------------- a quick language-modelling run
@pytest.fixture(scope="module")
def bigram_run(tmp_path_factory):
    """Two bigram models at two lengths, two seeds, one precision, sizes not matched (so marked)."""
    from mkeval.registry.manager import Registry, load_entry_points

    registry = Registry()
    load_entry_points(registry)
    registry.add(bigram_spec("bigram"))
    registry.add(bigram_spec("wide", d_model=24))
    out = tmp_path_factory.mktemp("bigram")
    protocol = Protocol(batch_size=4, seq_lens=(8, 16), train_tokens=4 * 16 * 6, eval_interval=3, warmup_steps=1,
                        eval_tokens=256, test_tokens=256, seeds=(0, 1))
    mkeval.run(models="bigram,wide", datasets="markov", protocol=protocol, output_dir=out, registry=registry,
               device="cpu", match_params="none")
    return out


def test_an_lm_only_run_gets_its_plots_and_no_others(bigram_run, tmp_path, capsys):
    directory = tmp_path / "run"
    shutil.copytree(bigram_run, directory)
    assert main(["report", str(directory), "--html"]) == 0
    assert "report.html" in capsys.readouterr().err.replace("\n", "")
    # two lengths: a length plot; one precision, no downstream results: no precision or downstream plot
    check_page(directory, LM_PLOTS | {"perplexity_by_seq_len"})


def test_plotted_numbers_are_those_of_the_result_files(bigram_run):
    from mkeval.report.plots import draw_all
    from mkeval.report.core import build_report

    cells = read_cells(bigram_run)
    plots = by_name(draw_all(build_report(bigram_run)))
    # learning curves: x = step x batch size x length, y = the mean over seeds, band = min-max
    panels = {ax.get_title(): ax for ax in plots["learning_curves"].figure.axes if ax.get_visible() and ax.get_title()}
    for seq_len in (8, 16):
        ax = panels[f"markov, seq {seq_len}, trained at fp32"]
        lines = {(tuple(np.round(line.get_xdata(), 6)), tuple(np.round(line.get_ydata(), 6)))
                 for line in ax.get_lines()}
        bands = [c.get_paths()[0].vertices[:, 1] for c in ax.collections]
        for model in ("bigram", "wide"):
            mine = [c for c in cells if c["model_name"] == model and c["seq_len"] == seq_len]
            curves = np.array([c["epoch_perplexities"] for c in mine])
            x = np.array(mine[0]["eval_steps"]) * 4 * seq_len
            assert (tuple(np.round(x, 6)), tuple(np.round(curves.mean(0), 6))) in lines
            assert any(np.isclose(b.min(), curves.min()) and np.isclose(b.max(), curves.max()) for b in bands)
    # test perplexity: the 95% Student-t interval over seeds
    bars = [c.lines[2][0].get_segments()[0] for ax in plots["test_perplexity"].figure.axes for c in ax.containers]
    for model in ("bigram", "wide"):
        for seq_len in (8, 16):
            low, high = t_interval([c["test_perplexity"] for c in cells if (c["model_name"], c["seq_len"])
                                    == (model, seq_len)])
            assert any(np.isclose(seg[0][1], low) and np.isclose(seg[1][1], high) for seg in bars)
    # effective context: distances on x, the mean total variation over seeds on y
    ax = next(a for a in plots["effective_context"].figure.axes if a.get_title() == "markov, seq 16, trained at fp32")
    assert ax.get_xscale() == "symlog"
    lines = [(tuple(line.get_xdata()), np.asarray(line.get_ydata())) for line in ax.get_lines()]
    for model in ("bigram", "wide"):
        probes = [c["effective_context"] for c in cells if (c["model_name"], c["seq_len"]) == (model, 16)]
        expected = np.mean([p["total_variation"] for p in probes], axis=0)
        assert probes[0]["distances"][0] == 0
        assert any(x == tuple(probes[0]["distances"]) and np.allclose(y, expected) for x, y in lines)
    # cost: FLOPs per token = (forward + backward) per step / (batch size x length)
    flops = {c["forward_flops"] / 64 + c["backward_flops"] / 64 for c in cells if c["seq_len"] == 16}
    xs = {round(float(line.get_xdata()[0]), 6) for line in plots["cost_quality"].figure.axes[0].get_lines()}
    assert {round(f, 6) for f in flops} <= xs


def test_marks_none_and_nan_values(bigram_run, tmp_path):
    """Marks drawn where the number is; diverged (null) numbers left out without a crash."""
    from mkeval.report.html import write_html_report
    from mkeval.report.plots import draw_all
    from mkeval.report.core import build_report, write_report

    directory = tmp_path / "run"
    shutil.copytree(bigram_run, directory)
    marks = {"test_contamination": "the test split was read for selection",
             "valid_is_train_text": "validation read the training text",
             "flops_incomplete": "aten.lstm ran without a FLOP formula"}
    for path in directory.glob("*.json"):
        data = json.loads(path.read_text())
        if "cell_hash" not in data:
            continue
        if data["model_name"] == "bigram" and data["seq_len"] == 16:
            data["marks"].update(marks)
        if data["model_name"] == "bigram" and data["seq_len"] == 8 and data["seed"] == 1:
            data["epoch_perplexities"][0] = None  # a diverged evaluation
            data["effective_context"]["total_variation"][1] = None
            data["tokens_per_second"] = None
            data["peak_memory_mb"] = None
        if data["model_name"] == "wide" and data["seq_len"] == 16:
            data["test_perplexity"] = None  # both seeds diverged: no point at all
        if data["model_name"] == "wide" and data["seq_len"] == 8 and data["seed"] == 1:
            data["test_perplexity"] = None  # one seed left: a point without an interval
        path.write_text(json.dumps(data))
    report = build_report(directory)
    plots = by_name(draw_all(report))
    assert "‡" in texts(plots["test_perplexity"].figure) and "‡" in texts(plots["perplexity_by_seq_len"].figure)
    assert "†" in texts(plots["learning_curves"].figure)
    cost = plots["cost_quality"].figure
    assert any("*" in t for t in texts(cost)) and all("*" not in t for t in texts(plots["test_perplexity"].figure))
    for plot in plots.values():  # size not matched: in every legend
        assert {"bigram ≠", "wide ≠"} <= set(texts(plot.figure)), plot.name
    # wide at 16 has no test perplexity: no point; wide at 8 has one seed: a point without an error bar
    axes = plots["test_perplexity"].figure.axes  # a panel per length
    with_interval = [c for ax in axes for c in ax.containers]
    points = [x for ax in axes for line in ax.get_lines() for x in line.get_xdata() if line.get_marker() == "o"]
    assert len(with_interval) == 2 and len(points) == 3
    assert any("one seed: no error bar" in t for t in texts(plots["test_perplexity"].figure))
    write_report(report, directory)
    write_html_report(report, directory)
    # the n column counts the seeds behind the mean: 1 of 2 for wide at 8, 0 of 2 at 16
    [quality, *_] = markdown_tables(directory / "report.md")
    n_of = {(row[0], row[2]): row[quality[0].index("n")] for row in quality[1:]}
    assert n_of[("wide", "8")] == "1/2" and n_of[("wide", "16")] == "0/2" and n_of[("bigram", "8")] == "2"
    page = Page((directory / "report.html").read_text())
    assert page.tables == markdown_tables(directory / "report.md")
    assert {(marks[k], s) for k, s in (("test_contamination", "‡"), ("valid_is_train_text", "†"),
                                         ("flops_incomplete", "*"))} <= set(page.marks)


def test_stale_plots_are_removed_and_other_files_kept(bigram_run, tmp_path):
    directory = tmp_path / "run"
    shutil.copytree(bigram_run, directory)
    (directory / "plots").mkdir()
    (directory / "plots" / "perplexity_by_precision.png").write_bytes(b"old")
    (directory / "plots" / "downstream_glue.png").write_bytes(b"old")
    (directory / "plots" / "my_own.png").write_bytes(b"mine")
    # what a previous report drew (its index), e.g. before the run lost its downstream results
    (directory / "plots" / "plots.json").write_text(json.dumps(["perplexity_by_precision", "downstream_glue"]))
    assert main(["report", str(directory), "--html"]) == 0
    left = {p.name for p in (directory / "plots").iterdir()}
    assert "perplexity_by_precision.png" not in left and "downstream_glue.png" not in left
    assert "my_own.png" in left
    drawn = set(json.loads((directory / "plots" / "plots.json").read_text()))
    assert {f"{name}.png" for name in drawn} == left - {"my_own.png", "plots.json"}


def test_report_without_html_loads_no_plotting(bigram_run, tmp_path):
    directory = tmp_path / "run"
    shutil.copytree(bigram_run, directory)
    code = ("import sys; from mkeval.cli import main; assert main(['report', sys.argv[1]]) == 0; "
            "loaded = [m for m in ('matplotlib', 'mkeval.report.plots', 'mkeval.report.html', 'PIL') if m in sys.modules]; "
            "assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code, str(directory)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (directory / "report.html").exists() and not (directory / "plots").exists()


# --------------------------------------------------------------------------- precisions and downstream tasks
TOY_COMMON = "kind: multiple_choice\nmetrics: [accuracy]\ninputs: ['{q}']\nlabel: label\nlabels: [0, 1]\n"


def toy_tasks(root: Path) -> tuple[Path, Path]:
    """Task specs and data: 'toyyes' (every mode scores), 'toyunk' (its eval options are words the
    train split lacks: fine-tuned scores, prompt modes are degenerate) and two MMLU-like subjects."""
    spec, data = root / "spec", root / "data"
    spec.mkdir()
    data.mkdir()
    for name, files, a, b in (("toyyes", "yes", "yes", "no"), ("toyunk", "unk", "{a}", "{b}")):
        (spec / f"{name}.yaml").write_text(
            f"name: {name}\ngroups: [toy]\n{TOY_COMMON}choices: ['{a}', '{b}']\nlocal:\n  - format: jsonl\n"
            f"    files: {{train: {files}_train.jsonl, eval: {files}_val.jsonl, fewshot: {files}_train.jsonl}}\n"
            f"prompt:\n  text: '{{q}}'\n  choices: ['{a}', '{b}']\n")
    for category, name in (("stem", "mmlu_toy_algebra"), ("humanities", "mmlu_toy_history")):
        (spec / f"{name}.yaml").write_text(
            f"name: {name}\ngroups: [mmlu]\ncategory: {category}\nfinetune: false\n{TOY_COMMON}choices: ['A', 'B']\n"
            f"local:\n  - format: jsonl\n    files: {{eval: {name}_val.jsonl, fewshot: {name}_dev.jsonl}}\n"
            "prompt:\n  text: '{q}\\nA. {a}\\nB. {b}\\nAnswer:'\n  choices: ['A', 'B']\n")
    rng = np.random.default_rng(0)
    words = "red green blue cat dog sun moon tree river stone".split()

    def write(name, n, a="yes", b="no"):
        rows = [{"q": " ".join(rng.choice(words, 5)) + (" up" if i % 2 == 0 else " down"), "a": a, "b": b,
                 "label": i % 2} for i in range(n)]
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("yes_train.jsonl", 16)
    write("yes_val.jsonl", 8)
    write("unk_train.jsonl", 16, "left", "right")
    write("unk_val.jsonl", 8, "north", "south")
    for name in ("mmlu_toy_algebra", "mmlu_toy_history"):
        write(f"{name}_val.jsonl", 8, "up", "down")
        write(f"{name}_dev.jsonl", 4, "up", "down")
    return spec, data


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """transformer and bk, two seeds, fp32 and int8, on markov; then toy downstream tasks into the same folder."""
    root = tmp_path_factory.mktemp("full")
    out = root / "results"
    protocol = Protocol(batch_size=4, seq_lens=(16,), train_tokens=4 * 16 * 6, eval_interval=3, warmup_steps=1,
                        eval_tokens=256, test_tokens=256, seeds=(0, 1))
    mkeval.run(models="transformer,bk", datasets="markov", precisions="fp32,int8", protocol=protocol,
               output_dir=out, device="cpu")
    spec, data = toy_tasks(root)
    result = mkeval.run(models="transformer,bk", tasks="toyyes,toyunk,mmlu_toy_algebra,mmlu_toy_history",
                        include_path=str(spec), data_dir=data, output_dir=out, device="cpu", model_size="tiny",
                        protocol=protocol.replace(ft_epochs=1, ft_max_len=32, ft_batch_size=8, fewshot=(0, 1)))
    assert not result.failed_tasks
    assert main(["report", str(out), "--html"]) == 0
    return out


FULL_PLOTS = LM_PLOTS | {"perplexity_by_precision", "downstream_toy", "downstream_mmlu", "mmlu_categories"}


@pytest.mark.slow
def test_full_report_page_and_plots(full_run):
    page = check_page(full_run, FULL_PLOTS)
    [downstream] = [t for t in page.tables if t[0][:4] == ["benchmark", "task", "mode", "metric"]]
    assert ["toy", "toyunk", "0-shot", "score", "degenerate", "degenerate"] in downstream
    assert '<td class="status">degenerate</td>' in (full_run / "report.html").read_text()


@pytest.mark.slow
def test_downstream_plots_show_degenerate_modes_as_text_and_the_seed_interval(full_run, tmp_path):
    from matplotlib.patches import Rectangle

    from mkeval.report.plots import draw_all
    from mkeval.report.core import build_report

    plots = by_name(draw_all(build_report(full_run)))
    [ax] = plots["downstream_toy"].figure.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    degenerate = {i for i, label in enumerate(labels) if label.startswith("toyunk") and "shot" in label}
    assert len(degenerate) == 2
    words = [t for t in ax.texts if t.get_text().strip() == "degenerate"]
    assert len(words) == 4 and {round(t.get_position()[1]) for t in words} == degenerate
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() < 1]
    assert not {round(b.get_y() + b.get_height() / 2) for b in bars} & degenerate
    # the fine-tuned toyyes bars: the mean over seeds of each unit's task result, with the t-interval
    row = labels.index("toyyes · fine-tuned · accuracy")
    for group in ("transformer", "bk"):
        scores = [json.loads((full_run / "downstream" / f"{group}_seed{s}" / "toyyes.json").read_text())
                  ["finetune"]["metrics"]["accuracy"] for s in (0, 1)]
        assert any(math.isclose(b.get_width(), np.mean(scores)) and round(b.get_y() + b.get_height() / 2) == row
                   for b in bars), (group, scores)
        low, high = t_interval(scores)
        segments = [s for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None
                    for s in c.errorbar.lines[2][0].get_segments()]
        assert any(np.isclose(s[0][0], low) and np.isclose(s[1][0], high) for s in segments)
    # MMLU by category: the mean over seeds of each unit summary's category accuracy
    heights = {round(p.get_height(), 9) for ax in plots["mmlu_categories"].figure.axes for p in ax.patches}
    for group in ("transformer", "bk"):
        summaries = [json.loads((full_run / f"{group}_seed{s}_downstream.json").read_text()) for s in (0, 1)]
        for category in ("stem", "humanities"):
            mean = np.mean([s["mmlu"]["modes"]["0-shot"]["category_scores"][category] for s in summaries])
            assert round(mean, 9) in heights
    # a tie mark in a task result is drawn beside its bar
    directory = tmp_path / "marked"
    shutil.copytree(full_run, directory)
    for seed in (0, 1):
        path = directory / "downstream" / f"bk_seed{seed}" / "toyyes.json"
        data = json.loads(path.read_text())
        data["prompt"]["0-shot"]["ties"] = 2
        path.write_text(json.dumps(data))
    [ax] = by_name(draw_all(build_report(directory)))["downstream_toy"].figure.axes
    assert "◊" in [t.get_text() for t in ax.texts]


@pytest.mark.slow
def test_downstream_csv_lists_every_mode_of_every_task_with_seed_means(full_run):
    """report_downstream.csv holds each task's fine-tuned and k-shot rows, for every model, with the
    mean over seeds of the task files' numbers."""
    rows = list(csv.DictReader((full_run / "report_downstream.csv").open()))
    for group in ("transformer", "bk"):
        modes = {(r["task"], r["mode"]) for r in rows if r["model"] == group}
        for task in ("toyyes", "toyunk"):
            assert {(task, "fine-tuned"), (task, "0-shot"), (task, "1-shot")} <= modes, (group, task)
        for task in ("mmlu_toy_algebra", "mmlu_toy_history"):  # finetune: false
            assert {(task, "0-shot"), (task, "1-shot")} <= modes and (task, "fine-tuned") not in modes
        files = [json.loads((full_run / "downstream" / f"{group}_seed{s}" / "toyyes.json").read_text())
                 for s in (0, 1)]
        [fine] = [r for r in rows if (r["model"], r["task"], r["mode"], r["metric"]) ==
                  (group, "toyyes", "fine-tuned", "accuracy")]
        assert fine["n"] == "2" and math.isclose(float(fine["mean"]),
                                                 np.mean([f["finetune"]["metrics"]["accuracy"] for f in files]))
        [shot] = [r for r in rows if (r["model"], r["task"], r["mode"]) == (group, "toyunk", "0-shot")]
        assert shot["status"] == "degenerate" and shot["mean"] == ""


@pytest.mark.slow
def test_terminal_tables_fit_120_columns_and_name_their_memory(full_run, capsys):
    assert main(["report", str(full_run)]) == 0
    printed = capsys.readouterr().out
    assert printed and max(len(line) for line in printed.splitlines()) <= 120
    assert "peak RSS MiB" in printed and "weights MiB" in printed  # process memory vs the weights, named
    for path in full_run.glob("*_bits32_seed*.json"):  # numbers whole on one line, never folded ("100,02" / "5")
        assert f"{json.loads(path.read_text())['non_embedding_params']:,}" in printed
    # cost columns too are mean ± sample std over the two seeds
    for model in ("transformer", "bk"):
        cells = [json.loads((full_run / f"{model}_markov_seq16_bits32_seed{s}.json").read_text()) for s in (0, 1)]
        for field, text in (("tokens_per_second", "{:,.0f}"), ("training_time", "{:.1f}")):
            values = [c[field] for c in cells]
            mean, std = np.mean(values), np.std(values, ddof=1)
            assert f"{text.format(mean)} ± {text.format(std)}" in printed, (model, field)


def test_a_wide_table_is_split_into_parts_that_repeat_the_key_columns():
    from mkeval.report.terminal import split_columns

    headers = ["model", "dataset", "a", "b", "c"]
    rows = [["bk", "ptb", "1" * 20, "2" * 30, "3" * 10]]
    # natural widths: model 8, dataset 10, a 23, b 33, c 13 (text + 3), one less in all
    assert split_columns(headers, rows, 86) == [(headers, rows)]  # 87 - 1 = 86 fits
    parts = split_columns(headers, rows, 60)  # keys 18: a + b = 74 > 60; b + c = 64 > 60
    assert [h for h, _ in parts] == [["model", "dataset", "a"], ["model", "dataset", "b"], ["model", "dataset", "c"]]
    assert parts[1][1] == [["bk", "ptb", "2" * 30]]
    assert [h for h, _ in split_columns(headers, rows, 70)] == [["model", "dataset", "a"], ["model", "dataset", "b", "c"]]


@pytest.mark.slow
def test_baseline_puts_its_model_first_and_compares_the_others_with_it(full_run, tmp_path, capsys):
    directory = tmp_path / "copy"
    shutil.copytree(full_run, directory)
    for baseline, other in (("bk", "transformer"), ("transformer", "bk")):
        assert main(["report", str(directory), "--baseline", baseline]) == 0
        capsys.readouterr()
        rows = list(csv.DictReader((directory / "report_downstream.csv").open()))
        first = [r["model"] for r in rows if (r["task"], r["mode"]) == ("toyyes", "fine-tuned")]
        assert first[0] == baseline and other in first
        md = (directory / "report.md").read_text()
        assert md.index(f"| {baseline} ") < md.index(f"| {other} ")
    assert main(["report", str(directory), "--baseline", "nosuchmodel"]) == 2
    assert "--baseline: no model 'nosuchmodel'" in capsys.readouterr().err


def browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@pytest.mark.slow
@pytest.mark.skipif(browser() is None, reason=f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); "
                                              "apt-get install chromium to run this test")
def test_a_headless_browser_loads_every_plot_offline(full_run, tmp_path):
    """Chromium renders a copy of the page with a probe that writes each image's loaded size into the DOM."""
    probe = ("<script>window.addEventListener('load', () => { const p = document.createElement('pre'); "
             "p.id = 'probe'; p.textContent = JSON.stringify(Array.from(document.images, i => "
             "[i.closest('figure').id, i.complete, i.naturalWidth, i.naturalHeight])); "
             "document.body.appendChild(p); });</script>")
    page = tmp_path / "page.html"
    page.write_text((full_run / "report.html").read_text().replace("</body>", probe + "</body>"))
    started = time.monotonic()
    proc = subprocess.run([browser(), *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=180)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    loaded = json.loads(html.unescape(dom[start:dom.index("</pre>", start)]))
    assert {figure.removeprefix("plot-") for figure, *_ in loaded} == FULL_PLOTS
    for figure, complete, width, height in loaded:
        with Image.open(full_run / "plots" / f"{figure.removeprefix('plot-')}.png") as im:
            assert complete and (width, height) == im.size, figure
    print(f"chromium rendered report.html in {seconds:.1f} s")


@pytest.mark.slow
def test_downstream_notes_say_what_a_reader_needs(full_run, tmp_path):
    """Units fine-tuned from scratch are named as such (their k-shot scores are an untrained model's),
    and a mode skipped inside a task that ran says why."""
    from mkeval.report.core import build_report

    directory = tmp_path / "copy"
    shutil.copytree(full_run, directory)
    path = directory / "downstream" / "bk_seed0" / "toyyes.json"
    data = json.loads(path.read_text())
    data["finetune"] = {"status": "skipped", "reason": "no train split (absent: toy/train.jsonl)"}
    path.write_text(json.dumps(data))
    report = build_report(directory)
    notes = report.downstream.notes
    # a seed whose task result is missing: its group's mean is over fewer seeds, and the cell says so
    (directory / "downstream" / "transformer_seed1" / "toyyes.json").unlink()
    from mkeval.report.downstream import downstream_table

    headers, rows = downstream_table(build_report(directory).downstream)
    [row] = [r for r in rows if r[1:4] == ["toyyes", "fine-tuned", "accuracy"]]
    cell = row[headers.index("transformer (n=2)")]
    seed0 = json.loads((full_run / "downstream" / "transformer_seed0" / "toyyes.json").read_text())
    assert cell == f"{seed0['finetune']['metrics']['accuracy']:.4f} (n=1)"
    assert "(n=" not in row[headers.index("bk (n=2)")]
    for group in ("transformer", "bk"):
        assert any(n.startswith(f"{group}: not pretrained (no --datasets)") for n in notes)
    assert "toyyes fine-tuned: skipped, no train split (absent: toy/train.jsonl)" in notes
