"""What-if latency benchmark (not a test): slider release -> every figure redrawn, in Chromium.

    python -m app.dashboard.whatif_bench [--moves 30] [--n-e 800] [--n-i 200] [--t-ms 200]
                                          [--images 16] [--with-training]

Trains a run for one smoke-tier epoch at the given size (fast backend) in a
throwaway data folder, starts a server on 127.0.0.1 and opens /whatif on it.
Each move drags the W_ei or W_ie slider's handle with the mouse to a random
position and releases it; the time is taken in the browser from the pointerup
event to the first animation frame painted after the frame of that slider
value has arrived (Bokeh paints its canvases in the animation frame after a
change). The page reports its server-side timings with each frame (simulation,
spectrum and the rest of the analysis, building the frame's arrays, applying
them to the document), so the rest is serialisation, the websocket and the
browser's render. `--with-training` keeps one training run (same size, fast
backend) going on the server's worker meanwhile. Target: p95 <= 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from app.dashboard.bench import CHROMIUM, start_server
from jobs.models import RunState
from jobs.paths import DataDir
from jobs.service import JobService
from jobs.store import RunStore

SLIDERS = {"w_ei_scale": 0, "w_ie_scale": 1}  # their order on the page
STATE_JS = """() => {
  const m = Bokeh.documents.flatMap(d => [...d.all_models])
      .find(m => typeof m.text === 'string' && m.text.includes('whatif-state'));
  return m ? m.text : null; }"""
# resolves at the first painted frame after the summary carries `attr`="value"
PAINTED_JS = """([attr, value, t0]) => new Promise(resolve => {
  const model = Bokeh.documents.flatMap(d => [...d.all_models])
      .find(m => typeof m.text === 'string' && m.text.includes('whatif-state'));
  const re = new RegExp(attr + '=(?:"|&quot;)([^"&]+)');
  const poll = () => {
    if (performance.now() - t0 > 60000) { resolve(null); return; }
    const found = (model.text.match(re) || [])[1];
    if (found !== undefined && Math.abs(parseFloat(found) - value) < 1e-6) {
      const seen = performance.now();
      requestAnimationFrame(() => requestAnimationFrame(() =>
        resolve({seen: seen - t0, painted: performance.now() - t0, text: model.text})));
    } else requestAnimationFrame(poll);
  };
  poll(); })"""




def trained_run(data: DataDir, n_e: int, n_i: int, t_ms: float) -> str:
    from engine import train
    from engine.config import Config

    store = RunStore(data.db_path)
    run = JobService(store, data).submit_run({"n_e": n_e, "n_i": n_i, "t_ms": t_ms, "epochs": 1, "tier": "smoke",
                                              "backend": "fast"})
    started = time.perf_counter()
    train(Config.from_dict(run.config), data.run_dir(run.id))
    store.claim_next()
    store.transition(run.id, RunState.SUCCEEDED)
    store.close()
    print(f"trained run {run.id} ({n_e} E / {n_i} I, {t_ms:g} ms, 1 smoke epoch) in "
          f"{time.perf_counter() - started:.0f} s")
    return run.id


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def timings_of(text: str) -> dict[str, float]:
    import html
    import json
    import re

    inner = html.unescape(html.unescape(text))
    state = json.loads(re.search(r"<div class=\"whatif-state\"[^>]*>(.*?)</div>", inner, re.DOTALL).group(1))
    return state["timings_s"]


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=30)
    parser.add_argument("--n-e", type=int, default=800)
    parser.add_argument("--n-i", type=int, default=200)
    parser.add_argument("--t-ms", type=float, default=200.0)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--with-training", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data = DataDir.at(Path(tmp) / "data")
        run_id = trained_run(data, args.n_e, args.n_i, args.t_ms)
        process, url = start_server(data.root, 1 if args.with_training else 0)
        try:
            if args.with_training:
                training = httpx.post(url + "/api/runs", json={"config": {
                    "n_e": args.n_e, "n_i": args.n_i, "t_ms": args.t_ms, "epochs": 50, "tier": "smoke",
                    "backend": "fast"}}).json()["id"]
                while httpx.get(f"{url}/api/runs/{training}").json()["state"] != "running":
                    time.sleep(0.5)
                time.sleep(5)  # past the worker's start-up
                print(f"training run {training} is running alongside")
            rows = measure(sync_playwright, url, run_id, args)
            if args.with_training:
                httpx.post(f"{url}/api/runs/{training}/cancel")
        finally:
            process.terminate()
            process.wait(20)
    report(rows, args, load)
    return 0


def measure(sync_playwright, url: str, run_id: str, args) -> list[dict]:
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # warm-up: the server's first what-if loads the kernels and the weights
        httpx.post(f"{url}/api/runs/{run_id}/whatif", json={"n_images": args.images}, timeout=600)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(f"{url}/whatif?run={run_id}", timeout=300_000)
        page.wait_for_function(f"() => ({STATE_JS})() !== null", timeout=300_000, polling=200)
        page.locator(".slider-edit input").first.wait_for()
        if args.images != 16:
            box = page.locator(".bk-input-group:has(label:text-is('N images (accuracy, rates)')) input").first
            box.fill(str(args.images))
            box.press("Enter")
        page.wait_for_timeout(3000)
        page.evaluate("() => window.addEventListener('pointerup', e => { window.__released = e.timeStamp; }, true)")
        for move in range(args.moves):
            name = "w_ie_scale" if move % 2 else "w_ei_scale"
            track = page.locator(".noUi-target").nth(SLIDERS[name])
            handle = page.locator(".noUi-handle").nth(SLIDERS[name])
            t_box, h_box = track.bounding_box(), handle.bounding_box()
            page.mouse.move(h_box["x"] + h_box["width"] / 2, h_box["y"] + h_box["height"] / 2)
            page.mouse.down()
            target = t_box["x"] + t_box["width"] * random.uniform(0.02, 0.5)  # multipliers 0.2 .. 5
            page.mouse.move(target, h_box["y"] + h_box["height"] / 2, steps=4)
            page.mouse.up()
            value = float(track.evaluate("el => el.noUiSlider.get(true)"))  # aria-valuenow is rounded
            released = page.evaluate("() => window.__released")
            seen = page.evaluate(PAINTED_JS, [f"data-{name}", value, released])
            if seen is None:
                print(f"move {move + 1:2d}: {name} -> {value}: no frame within 60 s", flush=True)
                continue
            rows.append({"slider": name, "value": value, "seen_s": seen["seen"] / 1000,
                         "total_s": seen["painted"] / 1000, **timings_of(seen["text"])})
            print(f"move {move + 1:2d}: {name} -> {value:5.2f}: {rows[-1]['total_s']:.3f} s "
                  f"(simulate {rows[-1]['simulate']:.3f}, analyse {rows[-1]['analyse']:.3f})", flush=True)
            page.wait_for_timeout(300)
        page.screenshot(path="/tmp/whatif_bench_last.png", full_page=True)
        browser.close()
    return rows


def report(rows: list[dict], args, load) -> None:
    total = [r["total_s"] for r in rows]
    print(f"\nWhat-if latency, {args.n_e} E / {args.n_i} I, {args.t_ms:g} ms trials, {args.images} images + the "
          f"picked one, {len(rows)} slider releases{' with one training run alongside' if args.with_training else ''}"
          f"; load average at start {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}")
    print(f"  release -> last figure painted: p50 {statistics.median(total):.3f} s, p95 {percentile(total, 95):.3f} s, "
          f"max {max(total):.3f} s (target p95 <= 0.5 s)")
    for key, label in (("simulate", "simulation (fast backend)"), ("analyse", "spectrum, rates, raster events"),
                       ("prepare", "frame arrays"), ("apply", "document update")):
        print(f"  {label:<34} median {statistics.median(r[key] for r in rows):.3f} s")
    server = [r["simulate"] + r["analyse"] + r["prepare"] + r["apply"] for r in rows]
    rest = [r["seen_s"] - s for r, s in zip(rows, server)]
    render = [r["total_s"] - r["seen_s"] for r in rows]
    print(f"  {'queue, serialisation, websocket':<34} median {statistics.median(rest):.3f} s "
          f"(release -> frame in the browser, minus the server's parts)")
    print(f"  {'Bokeh render (to the painted frame)':<34} median {statistics.median(render):.3f} s")


if __name__ == "__main__":
    sys.exit(main())
