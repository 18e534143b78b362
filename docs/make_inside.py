"""Make the pictures of docs/inside.md from models trained here, now (`make docs` runs it).

    python docs/make_inside.py --data shakespeare            # or --data PATH/TO/input.txt

Trains the chapter's two models (a bigram, then the default gpt), exports the gpt with its
attention outputs, and writes into docs/:

    inside-bigram.png        gen attention of the bigram: its 65 x 65 table
    inside-loss.png          gen plot of the gpt's run: losses, ln(65), the best checkpoint
    inside-attention.png     gen attention of the gpt's export: a heatmap per layer and head
    playground-inside-temperature.png, playground-inside-top-k.png
                             the playground's panels for a clicked token (Playwright and
                             Chromium; skipped, saying so, where they are missing)

Every command's output is printed as it runs: the chapter quotes it. The work (checkpoints,
the export) goes to --work, build/inside by default. The same seed gives the same pictures.
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

DOCS = Path(os.path.relpath(Path(__file__).resolve().parent))  # relative to where it runs: shorter lines to quote
GEN = [sys.executable, "-c", "from gen.core.cli import cli; cli()"]
PROMPT = "ROMEO:\nBut soft, what light"
GPT_SHAPE = ["--n-layer", 2, "--n-head", 4, "--n-embd", 64, "--lr", 3e-3]


def gen(*arguments) -> None:
    """Run one gen command, showing it and what it prints; stop at its first failure."""
    shown = " ".join(f"'{a}'" if (" " in str(a) or "\n" in str(a)) else str(a) for a in arguments)
    print(f"$ gen {shown}".replace("\n", "\\n"), flush=True)
    subprocess.run([*GEN, *map(str, arguments)], check=True)


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
    parser.add_argument("--data", default="shakespeare", help="what gen train --data takes (default: shakespeare)")
    parser.add_argument("--work", default="build/inside", help="where the checkpoints and the export go")
    parser.add_argument("--max-iters", type=int, default=600, help="the gpt's training steps (default 600)")
    arguments = parser.parse_args()
    work = Path(arguments.work)
    work.mkdir(parents=True, exist_ok=True)

    # 1. The bigram: one table, trained in a few minutes, drawn as it is.
    gen("train", "--model", "bigram", "--data", arguments.data, "--out", work / "bigram", "--max-iters", 1500,
        "--eval-interval", 500, "--eval-iters", 20, "--overwrite")
    gen("attention", "--checkpoint", work / "bigram", "--out", DOCS / "inside-bigram.png")
    # 2. A small gpt (2 layers of 4 heads, 64 wide: minutes on a CPU), its curves, its export with the
    # attention outputs, its heads.
    gen("train", "--data", arguments.data, "--out", work / "gpt", *GPT_SHAPE, "--max-iters", arguments.max_iters,
        "--eval-interval", 50, "--eval-iters", 20, "--overwrite")
    gen("plot", work / "gpt", "--output", DOCS / "inside-loss.png")
    gen("export", work / "gpt.onnx", "--checkpoint", work / "gpt", "--attention", "--overwrite")
    gen("info", work / "gpt.onnx")
    gen("attention", "--model", work / "gpt.onnx", "--prompt", PROMPT, "--out", DOCS / "inside-attention.png")
    # 3. Sampling: what temperature and top_k do to a token's distribution, in the playground.
    gen("run", work / "gpt.onnx", "--prompt", PROMPT, "--sampler", "temperature:t=0.5", "--seed", 7,
        "--max-new-tokens", 60)
    gen("run", work / "gpt.onnx", "--prompt", PROMPT, "--sampler", "top_k:k=3", "--seed", 7, "--max-new-tokens", 60)
    playground_screenshots(work / "gpt.onnx")


if __name__ == "__main__":
    main()
