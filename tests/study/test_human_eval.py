"""xlit-human-eval: blinded export, the offline page in headless Chromium, import validation, agreement."""

import csv
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions.judge import CRITERIA, reported_scores
from xlit_jax.study import human_eval

from support import REPO

MODELS = ("model-a", "model-b")
LANGUAGES = ("en", "fr")
IDS = [str(i) for i in range(6)]


def judge_stars_of(model: str, language: str, item: str) -> dict:
    """The judge's stars, a deterministic pattern so tests know them."""
    return {c: 1 + (int(item) + len(model) + k + (language == "fr")) % 3 for k, c in enumerate(CRITERIA)}


@pytest.fixture
def eval_dirs(tmp_path) -> list[Path]:
    """Two evaluated out_dirs as xlit-eval writes them: generations and the judge's item scores."""
    dirs = []
    for model in MODELS:
        out = tmp_path / "runs" / model
        out.mkdir(parents=True)
        generations, scores = [], []
        for language in LANGUAGES:
            for item in IDS:
                instruction = f"[{language}] instruction {item}, with \"quotes\", commas\nand a newline"
                generations.append({"model": model, "set": "chirkova", "language": language, "id": item,
                                    "modifier": None, "expected_language": language,
                                    "messages": [{"role": "user", "content": instruction}],
                                    "response": f"reply #{MODELS.index(model)} to {item} ({language}) </script>",
                                    "decoding": {}})
                stars = judge_stars_of(model, language, item)
                scores.append({"model": model, "set": "chirkova", "language": language, "id": item, "scorer": "judge",
                               "modifier": None, "scores": reported_scores({c: s - 1 for c, s in stars.items()}),
                               "details": {"stars": stars}})
        (out / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in generations))
        (out / "item_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scores))
        dirs.append(out)
    return dirs


def _fill(sheet: Path, annotator: str, scores_for) -> Path:
    """A filled copy of a CSV sheet: scores_for(key_row) gives each item's scores (0-2)."""
    key = human_eval.read_key(sheet.parent / "key.jsonl")
    rows = list(csv.DictReader(sheet.open(encoding="utf-8")))
    for row in rows:
        row.update(scores_for(key[row["item"]]), annotator=annotator)
    filled = sheet.with_name(f"ratings.{annotator}.{sheet.name}")
    filled.write_text(human_eval.csv_text(rows), encoding="utf-8")
    return filled


def _judge_like(key_row: dict) -> dict:
    """The judge's stars on the human scale (stars minus one)."""
    return {c: str(s - 1) for c, s in judge_stars_of(key_row["model"], key_row["language"], key_row["id"]).items()}


def test_export_is_blinded_shuffled_and_keyed(eval_dirs, tmp_path, shared_data):
    written = human_eval.export(eval_dirs, tmp_path / "sheets", limit=4, seed=1, data_dir=shared_data)
    key = human_eval.read_key(written["key"])
    for language in LANGUAGES:
        rows = list(csv.DictReader(written[f"{language}.csv"].open(encoding="utf-8")))
        assert len(rows) == len(MODELS) * 4 and list(rows[0]) == list(human_eval.SHEET_FIELDS)
        ids = {key[r["item"]]["id"] for r in rows}
        assert len(ids) == 4  # the same 4 instructions for both models ...
        models = [key[r["item"]]["model"] for r in rows]
        assert models != sorted(models)  # ... in a shuffled order
        for row in rows:
            source = key[row["item"]]
            assert row["response"] == f"reply #{MODELS.index(source['model'])} to {source['id']} ({language}) </script>"
        page = written[f"{language}.html"].read_text(encoding="utf-8")
        assert "Evaluation guidelines" in page and "model-a" not in page and "<script" not in page.split(
            'id="sheet"')[1].split("</script>")[0]  # the data cannot close its script tag
    assert {k["id"] for k in key.values() if k["language"] == "en"} == {
        k["id"] for k in key.values() if k["language"] == "fr"}  # the same instructions in every language


def test_import_unblinds_and_agrees_with_the_judge(eval_dirs, tmp_path):
    written = human_eval.export(eval_dirs, tmp_path / "sheets")
    perfect = _fill(written["fr.csv"], "anna", _judge_like)

    def one_off(key_row):  # every fluency rating one point away from the judge's, others equal
        scores = _judge_like(key_row)
        scores["fluency"] = str(1 if scores["fluency"] != "1" else 2)
        return scores

    off = _fill(written["fr.csv"], "ben", one_off)
    results = human_eval.import_sheets([perfect, off], written["key"], tmp_path / "results")
    agreed = {(r["who"], r["criterion"]): r for r in csv.DictReader(results["csv"].open())}
    n = len(MODELS) * len(IDS)
    for criterion in CRITERIA:
        row = agreed[("anna vs judge", criterion)]
        assert (int(row["n"]), float(row["exact_pct"]), float(row["kappa_w"])) == (n, 100.0, 1.0)
        assert float(row["spearman"]) == pytest.approx(1.0)
    assert float(agreed[("ben vs judge", "fluency")]["exact_pct"]) == 0.0
    assert float(agreed[("ben vs judge", "helpfulness")]["exact_pct"]) == 100.0
    assert float(agreed[("anna vs ben", "fluency")]["exact_pct"]) == 0.0
    assert int(agreed[("all annotators vs judge", "fluency")]["n"]) == 2 * n
    human = [json.loads(line) for line in results["human_scores"].read_text().splitlines()]
    assert {(h["annotator"], h["model"]) for h in human} == {(a, m) for a in ("anna", "ben") for m in MODELS}
    assert "| model-a | non-en | helpfulness |" in results["markdown"].read_text()


def test_weighted_kappa_by_hand():
    # observed: (0,0) .25, (0,1) .25, (1,1) .5; expected disagreement .25 -> 1 - .125 / .25
    assert human_eval.weighted_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    # reversed: observed disagreement (1 + 0 + 1) / 3, expected (uniform margins) 4 / 9 -> 1 - 1.5
    assert human_eval.weighted_kappa([0, 1, 2], [2, 1, 0]) == pytest.approx(-0.5)


def test_means_apply_the_wrong_language_rule_to_humans_and_judge(eval_dirs, tmp_path):
    written = human_eval.export(eval_dirs, tmp_path / "sheets", languages=["fr"])

    def rated(key_row):  # helpfulness 2 everywhere; item 0's responses rated in the wrong language
        scores = {c: "2" for c in CRITERIA}
        return scores | ({"language": "0", "helpfulness": "0"} if key_row["id"] == "0" else {})

    results = human_eval.import_sheets([_fill(written["fr.csv"], "anna", rated)], written["key"], tmp_path / "r")
    text = results["markdown"].read_text()
    judge = [judge_stars_of("model-a", "fr", i) for i in IDS]
    judge_help = [stars["helpfulness"] - 1 for stars in judge if stars["language"] > 1]  # 1 star: wrong language
    assert len(judge_help) == 4
    assert f"| model-a | non-en | helpfulness | 2.00 | 5 | {sum(judge_help) / 4:.2f} | 4 |" in text
    assert "| model-a | non-en | language | 1.67 | 6 |" in text  # 5 x 2 + 0, over all 6


def test_export_takes_an_ids_file_and_the_default_model_on_the_rest(eval_dirs, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# the task-balanced sample\n3\n1  # twice\n1\n")
    written = human_eval.export(eval_dirs, tmp_path / "sheets", languages=["en"], ids_file=ids,
                                all_items_model="model-b")
    key = human_eval.read_key(written["key"])
    assert sorted((k["model"], k["id"]) for k in key.values()) == sorted(
        [("model-a", "1"), ("model-a", "3")] + [("model-b", i) for i in IDS])
    ids.write_text("1\n99\n")
    with pytest.raises(InputError, match=r"ids.txt: id '99' was not answered by every model"):
        human_eval.export(eval_dirs, tmp_path / "sheets", ids_file=ids)
    with pytest.raises(InputError, match="all_items_model 'model-c' is none of the models"):
        human_eval.export(eval_dirs, tmp_path / "sheets", all_items_model="model-c")


@pytest.mark.parametrize("change, message", [
    # each record spans two lines (the instruction has a newline): record k starts on line 2 + 2k
    (lambda rows: rows[1].update(item="fr-9999"), r"sheet.csv:4: unknown item 'fr-9999'"),
    (lambda rows: rows[0].update(fluency=""), r"sheet.csv:2: fluency: no score"),
    (lambda rows: rows[2].update(accuracy="3"), r"sheet.csv:6: accuracy: '3' is not 0, 1 or 2"),
    (lambda rows: rows[2].update(harmlessness="1.5"), r"sheet.csv:6: harmlessness: '1.5' is not 0, 1 or 2"),
    (lambda rows: rows.append(dict(rows[0])),
     r"sheet.csv:\d+: item 'fr-0001' rated twice by 'anna' \(first at line 2\)"),
])
def test_bad_sheets_name_file_and_line(eval_dirs, tmp_path, change, message):
    written = human_eval.export(eval_dirs, tmp_path / "sheets", languages=["fr"])
    filled = _fill(written["fr.csv"], "anna", _judge_like)
    rows = list(csv.DictReader(filled.open(encoding="utf-8")))
    rows.sort(key=lambda r: r["item"])
    change(rows)
    bad = tmp_path / "sheet.csv"
    bad.write_text(human_eval.csv_text(rows), encoding="utf-8")
    with pytest.raises(InputError, match=message):
        human_eval.import_sheets([bad], written["key"], tmp_path / "results")


def test_line_numbers_count_multiline_fields(eval_dirs, tmp_path):
    written = human_eval.export(eval_dirs, tmp_path / "sheets", languages=["fr"])
    rows = list(csv.DictReader(_fill(written["fr.csv"], "anna", _judge_like).open(encoding="utf-8")))
    rows[1]["fluency"] = "3"  # off the 0-2 scale
    bad = tmp_path / "sheet.csv"
    bad.write_text(human_eval.csv_text(rows), encoding="utf-8")
    text = bad.read_text()
    line = 1 + text[:text.index(rows[1]["item"])].count("\n")  # instructions span two lines
    with pytest.raises(InputError, match=rf"sheet.csv:{line}: fluency"):
        human_eval.import_sheets([bad], written["key"], tmp_path / "results")


def test_missing_column_and_cli_errors_are_one_line(eval_dirs, tmp_path):
    written = human_eval.export(eval_dirs, tmp_path / "sheets", languages=["fr"])
    bad = tmp_path / "sheet.csv"
    bad.write_text("item,lang\nfr-0001,fr\n")
    result = subprocess.run([sys.executable, "-m", "launch.human_eval", "import", f"--sheets={bad}",
                             f"--key={written['key']}", f"--out_dir={tmp_path / 'r'}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"xlit-human-eval: {bad}:1: no column 'language' (the header must have item and {', '.join(CRITERIA)})")


def _chromium_driver():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("headless Chromium is not installed (Debian: chromium chromium-driver; "
                    "scripts/install_system_packages.sh installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the test extra) is not installed")
    return chromium, driver, webdriver


def test_html_page_in_headless_chromium_saves_a_csv_that_imports(eval_dirs, tmp_path):
    chromium, driver_path, webdriver = _chromium_driver()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    written = human_eval.export(eval_dirs, tmp_path / "sheets", languages=["fr"], limit=3)
    key = human_eval.read_key(written["key"])
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(written["fr.html"].as_uri())
        assert browser.find_element(By.ID, "progress").text == "0 of 6 rated"
        browser.find_element(By.ID, "annotator").send_keys("chloe")
        for box in browser.find_elements(By.CSS_SELECTOR, ".item"):
            item = box.get_attribute("id").removeprefix("item-")
            for criterion, stars in _judge_like(key[item]).items():
                box.find_element(By.CSS_SELECTOR, f"input[name='{item}:{criterion}'][value='{stars}']").click()
        assert browser.find_element(By.ID, "progress").text == "6 of 6 rated"
        browser.find_element(By.ID, "save").click()
        target = downloads / "ratings.fr.chloe.csv"
        deadline = time.monotonic() + 30
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        browser.quit()
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert len(rows) == 6 and {r["annotator"] for r in rows} == {"chloe"}
    assert rows[0]["instruction"].endswith("commas\nand a newline")  # quoted fields survive the round trip
    results = human_eval.import_sheets([target], written["key"], tmp_path / "results")
    agreed = list(csv.DictReader(results["csv"].open()))
    assert {(r["criterion"], r["n"], r["exact_pct"]) for r in agreed} == {(c, "6", "100.0") for c in CRITERIA}
