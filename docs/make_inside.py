"""Photograph the playground for section 4 of docs/inside.md (`make docs` runs it).

    python docs/make_inside.py build/inside/gpt.onnx

The chapter's commands, and the pictures they draw, are the page's own blocks:
`python docs/run_docs.py --write docs/inside.md` runs them and writes what they print
into the page. What a block cannot do is click in a browser, so this serves the
chapter's export (made with `gen export --attention`; `make docs` copies it out of the
page's run), generates in the playground with a sampler, clicks a token and writes its
panels into docs/:

    playground-inside-temperature.png, playground-inside-top-k.png

It needs Playwright and Chromium and says so, skipping, where they are missing. The
same seed gives the same pictures.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DOCS = Path(os.path.relpath(Path(__file__).resolve().parent))  # relative to where it runs: shorter lines to print
GEN = [sys.executable, "-c", "from gen.core.cli import cli; cli()"]
PROMPT = "ROMEO:\nBut soft, what light"  # the prompt of the chapter's gen run and gen attention


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def playground_screenshots(model: Path) -> None:
    """Serve `model`, generate in the playground with a sampler, click a token, photograph its panels."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("skipping the playground screenshots: pip install playwright", flush=True)
        return
    chromium = os.environ.get("GEN_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        print("skipping the playground screenshots: no chromium (apt-get install chromium)", flush=True)
        return
    import httpx

    port = free_port()
    server = subprocess.Popen([*GEN, "serve", str(model), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("gen serve did not start")
            time.sleep(0.3)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for name, (spec, value) in {"temperature": ("temperature", "0.5"), "top-k": ("top_k", "3")}.items():
                page = browser.new_page(viewport={"width": 1100, "height": 1000})
                page.goto(f"{url}/")
                page.wait_for_selector("body[data-ready=true]")
                page.locator("#chain .link .remove").first.click()  # the page's default top_k:k=40
                if spec == "temperature":
                    page.eval_on_selector("#temperature", f"e => {{ e.value = '{value}'; "
                                                          "e.dispatchEvent(new Event('input')); }")
                else:
                    page.click("#add-sampler")
                    link = page.locator("#chain .link").last
                    link.locator("select.sampler-name").select_option("top_k")
                    link.locator("[data-option=k]").fill(value)
                page.fill("#prompt", PROMPT)
                page.fill("#seed", "7")
                page.fill("#max-tokens", "60")
                page.fill("#alternatives", "8")
                page.click("#generate")
                page.wait_for_function("document.querySelector('#status').textContent.startsWith('Finished')")
                page.locator("#completion .token").nth(5).click()
                page.wait_for_selector("#attention .head-row")
                page.mouse.move(0, 0)
                page.evaluate("document.querySelector('#tooltip').hidden = true")  # the panels, not the tooltip
                output = DOCS / f"playground-inside-{name}.png"
                page.locator("section.result").screenshot(path=str(output))
                print(f"wrote {output}", flush=True)
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the chapter's export, made with gen export --attention")
    arguments = parser.parse_args()
    if not arguments.model.is_file():
        raise SystemExit(f"no export at {arguments.model}: run `python docs/run_docs.py --write docs/inside.md "
                         "--copy build/inside/gpt.onnx:build/inside/gpt.onnx` first (make docs does)")
    playground_screenshots(arguments.model)


if __name__ == "__main__":
    main()
