"""The playground page of `gen serve` in a real browser: Playwright driving Debian's chromium,
headless. The page builds a sampler chain that includes a third-party plugin (examples/gen-typical,
registered in-process), streams a completion, and must show exactly the text the API gives
for the same request, each token coloured by its probability, with its alternatives on hover.
With a constraint, the text keeps to it and the alternatives it masked out are marked as such.

Without a browser these tests skip and say why: `apt-get install chromium` (`.ci/run` does).
GEN_PLAYGROUND_SCREENSHOT=PATH saves the screenshot there as well (docs/playground.png is one);
GEN_PLAYGROUND_CONSTRAINT_SCREENSHOT=PATH the constrained one (docs/playground-constraint.png),
GEN_PLAYGROUND_INSIDE_SCREENSHOT=PATH the panels of a clicked token (docs/playground-inside.png).
Clicking a token opens its distributions (the model's, and after the chain, removed tokens marked)
and each head's attention over the text before it, which must be the server's.
"""
import os
import re
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest

from serve_helpers import running_server
from gen.core.registry import get_plugins
from gen.runtime.onnx_model import OnnxModel
from gen.runtime.server import create_app

REPOSITORY = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("GEN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium to drive: apt-get install chromium (or set GEN_CHROMIUM to a Chromium binary)")


@pytest.fixture(scope="module")
def typical_plugin():
    """examples/gen-typical's `typical` sampler, registered as its package would be."""
    sys.path.insert(0, str(REPOSITORY / "examples" / "gen-typical"))
    import gen_typical

    get_plugins().register(gen_typical, "gen-typical")
    yield
    get_plugins().unregister(gen_typical)
    sys.path.remove(str(REPOSITORY / "examples" / "gen-typical"))


@pytest.fixture(scope="module")
def served(small_gpt_onnx, typical_plugin):
    generator = OnnxModel(small_gpt_onnx)
    with running_server(create_app(generator, max_batch=8)) as url:
        yield url, generator


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(f"{served[0]}/")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    yield page
    page.close()
    assert errors == [], errors


def add_link(page, name: str, **options) -> None:
    page.click("#add-sampler")
    link = page.locator("#chain .link").last
    link.locator("select.sampler-name").select_option(name)
    for option, value in options.items():
        link.locator(f"[data-option={option}]").fill(str(value))


def test_the_page_streams_the_apis_text_with_probabilities_and_alternatives(page, served, tmp_path):
    url, generator = served
    names = page.locator("#chain .link select.sampler-name option").all_text_contents()
    assert "typical (gen-typical)" in names and "mirostat" in names  # filled from /v1/samplers
    page.locator("#chain .link .remove").first.click()  # the default top_k link
    add_link(page, "typical", p=0.9)
    add_link(page, "top_k", k=12)
    page.eval_on_selector("#temperature", "e => { e.value = '0.8'; e.dispatchEvent(new Event('input')); }")
    page.fill("#prompt", "ROMEO:")
    page.fill("#seed", "21")
    page.fill("#max-tokens", "150")
    with page.expect_request("**/v1/completions") as sent:
        page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Finished')", timeout=30_000)

    body = sent.value.post_data_json
    assert body["sampler"] == ["temperature:t=0.8", "typical:p=0.9", "top_k:k=12"] and body["seed"] == 21
    assert body["stream"] is True
    shown = page.text_content("#completion")
    # The same request through the API, not streamed; and the text `gen run` prints.
    api = httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=60).json()
    assert shown == api["choices"][0]["text"]
    assert shown == generator.generate(["ROMEO:"], sampler=body["sampler"], seed=21, max_new_tokens=150)[0]
    command = page.text_content("#command")
    assert "--sampler temperature:t=0.8 --sampler typical:p=0.9 --sampler top_k:k=12 --seed 21" in command

    tokens = page.locator("#completion .token")
    assert tokens.count() == 150  # one coloured span per character token
    colours = set(tokens.evaluate_all("spans => spans.map(s => s.className.split(' ')[1])"))
    assert colours <= {"p-red", "p-yellow", "p-green", "p-cyan", "p-blue"} and len(colours) >= 2
    probabilities = tokens.evaluate_all("spans => spans.map(s => Number(s.dataset.p))")
    assert all(0 < p <= 1 for p in probabilities)

    tokens.nth(10).hover()
    tooltip = page.locator("#tooltip")
    assert tooltip.is_visible()
    rows = tooltip.locator("tr").all_text_contents()
    assert len(rows) == 5 and all("%" in row for row in rows)  # the 5 most likely alternatives
    assert "under the model" in tooltip.text_content()
    tokens.nth(20).click()  # a tap pins another token's alternatives
    assert page.locator(".token.pinned").count() == 1 and tooltip.is_visible()

    page.screenshot(path=str(tmp_path / "playground.png"))
    if os.environ.get("GEN_PLAYGROUND_SCREENSHOT"):
        page.screenshot(path=os.environ["GEN_PLAYGROUND_SCREENSHOT"])


def test_stop_cancels_the_request_on_the_server(page, served):
    url, _ = served
    page.fill("#max-tokens", "4000")
    page.click("#generate")
    page.wait_for_selector("#completion .token", timeout=15_000)
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').textContent === 'Stopped.'", timeout=15_000)
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health", timeout=30).json()["active_rows"]:
        assert time.monotonic() < deadline, "the stopped request stayed in the batch"
        time.sleep(0.02)
    assert 0 < len(page.text_content("#completion")) < 4000


def test_an_api_error_shows_on_the_page(page):
    page.fill("#prompt", "caf\u00e9")  # a character the model's tokenizer does not have
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').classList.contains('error')", timeout=15_000)
    assert "cannot be encoded by this model's tokenizer" in page.text_content("#status")


def test_a_regex_constraint_keeps_the_text_to_it_and_its_masked_alternatives_are_marked(page, served, tmp_path):
    url, _ = served
    page.locator("#chain .link .remove").first.click()
    add_link(page, "top_k", k=3)  # a filter too: its removed alternatives are marked apart from the masked ones
    page.select_option("#constraint-kind", "regex")
    page.fill("#constraint", "[A-Z]+")
    page.fill("#prompt", "KING")
    page.fill("#seed", "4")
    page.fill("#max-tokens", "30")
    page.fill("#alternatives", "12")
    with page.expect_request("**/v1/completions") as sent:
        page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Finished')", timeout=30_000)

    body = sent.value.post_data_json
    assert body["guided_regex"] == "[A-Z]+" and body["removed_alternatives"] is True
    assert "--regex '[A-Z]+'" in page.text_content("#command")
    shown = page.text_content("#completion")
    api = httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=60).json()["choices"][0]
    assert re.fullmatch("[A-Z]+", shown) and shown == api["text"]

    # Each token's marks are the API's; some alternative of some token was masked by the constraint.
    tokens = page.locator("#completion .token")
    marks = tokens.evaluate_all("spans => spans.map(s => JSON.parse(s.dataset.token).removed)")
    assert marks == api["logprobs"]["removed_alternatives"]
    masked_at = next(i for i, removed in enumerate(marks) if "constraint" in removed.values())
    tokens.nth(masked_at).click()
    masked = page.locator("#tooltip tr.masked")
    assert masked.count() == list(marks[masked_at].values()).count("constraint")
    assert masked.first.locator("td.why").text_content() == "masked by the constraint"
    assert masked.first.locator("td.text").evaluate("e => getComputedStyle(e).textDecorationLine") == "line-through"
    filtered = page.locator("#tooltip tr.filtered")
    assert filtered.count() == list(marks[masked_at].values()).count("filter")
    assert all(row == "removed by a filter" for row in filtered.locator("td.why").all_text_contents())

    page.screenshot(path=str(tmp_path / "playground-constraint.png"))
    if os.environ.get("GEN_PLAYGROUND_CONSTRAINT_SCREENSHOT"):
        page.screenshot(path=os.environ["GEN_PLAYGROUND_CONSTRAINT_SCREENSHOT"])


def test_a_bad_constraint_shows_its_one_line_error(page):
    page.select_option("#constraint-kind", "regex")
    page.fill("#constraint", "[A-Z")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').classList.contains('error')", timeout=15_000)
    status = page.text_content("#status")
    assert status.startswith("Error: invalid regular expression") and "\n" not in status
    assert "invalid" in page.get_attribute("#constraint", "class")  # the box that holds the mistake
    assert page.text_content("#completion") == ""


def test_the_page_asks_for_the_api_key_and_sends_it_with_its_calls(browser, small_gpt_onnx):
    with running_server(create_app(OnnxModel(small_gpt_onnx), api_keys=["page-key"])) as url:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(f"{url}/")
        page.wait_for_selector("#key-form:not([hidden])", timeout=15_000)  # /v1/samplers answered 401
        assert page.text_content("#key-message") == "This server needs an API key."
        page.fill("#key", "wrong-key")
        page.click("#key-form button")
        page.wait_for_selector("#key-form:not([hidden])", timeout=15_000)
        assert page.text_content("#key-message").startswith("That key was refused: the API key is not valid")
        page.fill("#key", "page-key")
        page.click("#key-form button")
        page.wait_for_selector("body[data-ready=true]", timeout=15_000)  # the samplers listed, with the key
        assert page.is_hidden("#key-form")
        page.fill("#max-tokens", "20")
        with page.expect_request("**/v1/completions") as sent:
            page.click("#generate")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('Finished')", timeout=30_000)
        assert sent.value.headers["authorization"] == "Bearer page-key"
        assert len(page.text_content("#completion")) == 20
        page.close()
    assert errors == [], errors


# --- inside the model: the clicked token's distributions and each head's attention ---------------


@pytest.fixture(scope="module")
def served_with_attention(make_gpt, tokenizer, tmp_path_factory):
    """conftest's small GPT exported with its attention outputs (gen export --attention), served."""
    from gen.core.tokenizer import tokenizer_to_dict
    from gen.export.onnx_export import ExportOptions, export_model

    path = tmp_path_factory.mktemp("inside") / "attention.onnx"
    export_model(make_gpt(tokenizer.vocab_size), path, tokenizer_document=tokenizer_to_dict("char", tokenizer),
                 options=ExportOptions(attention=True, verify=False, progress=None))  # checked in test_inside
    with running_server(create_app(OnnxModel(path), max_batch=4)) as url:
        yield url


def test_clicking_a_token_shows_both_distributions_and_each_heads_attention(browser, served_with_attention):
    url = served_with_attention
    page = browser.new_page(viewport={"width": 1200, "height": 1100})
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(f"{url}/")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    page.locator("#chain .link .remove").first.click()
    add_link(page, "top_k", k=3)
    page.fill("#prompt", "ROMEO:\nBut")
    page.fill("#seed", "5")
    page.fill("#max-tokens", "30")
    page.fill("#alternatives", "8")
    with page.expect_request("**/v1/completions") as sent:
        page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Finished')", timeout=30_000)
    body = sent.value.post_data_json
    assert body["sampled_distribution"] is True
    api = httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=60).json()["choices"][0]

    # The distribution: the model's 8 likeliest, 3 kept by top_k (bars after the chain), 5 marked removed.
    clicked = 12
    page.locator("#completion .token").nth(clicked).click()
    page.wait_for_selector("#attention .head-row", timeout=15_000)
    rows = page.locator("#distribution tr[data-probability]")
    assert rows.count() == 8
    expected = api["logprobs"]["sampled_distribution"][clicked]
    shown = rows.evaluate_all("rows => rows.map(r => [Number(r.dataset.probability), Number(r.dataset.sampled), "
                              "r.dataset.removed])")
    assert shown == [[entry["probability"], entry["sampled_probability"], entry["removed"] or ""] for entry in expected]
    removed = page.locator("#distribution tr.removed")
    assert removed.count() == 5
    assert all(why == "removed by a filter" for why in removed.locator("td.why").all_text_contents())
    assert removed.first.locator("td.text").evaluate("e => getComputedStyle(e).textDecorationLine") == "line-through"
    assert removed.first.locator(".bar.sampled").evaluate("e => e.getBoundingClientRect().width") == 0

    # The attention: one row per head (2 layers x 2 heads), the server's weights for the clicked token.
    text = "ROMEO:\nBut" + api["text"]
    offset = api["logprobs"]["text_offset"][clicked] + 1
    answer = httpx.post(f"{url}/attention", json={"prompt": text[:offset], "position": -1}, timeout=30).json()
    heads = page.locator("#attention .head-row")
    assert heads.count() == 4
    for index in range(4):
        row = heads.nth(index)
        layer, head = int(row.get_attribute("data-layer")), int(row.get_attribute("data-head"))
        weights = row.locator(".key").evaluate_all("keys => keys.map(k => Number(k.dataset.weight))")
        assert weights == answer["weights"][layer][head]
        assert row.locator(".key").count() == len(answer["tokens"])
    assert answer["tokens"][-1] == api["logprobs"]["tokens"][clicked]
    if os.environ.get("GEN_PLAYGROUND_INSIDE_SCREENSHOT"):
        page.locator("section.result").screenshot(path=os.environ["GEN_PLAYGROUND_INSIDE_SCREENSHOT"])
    page.close()
    assert errors == [], errors
