"""What-if latency benchmark (not a test): slider release -> every figure redrawn, in Chromium.

    python -m app.dashboard.whatif_bench [--moves 30] [--n-e 800] [--n-i 200] [--t-ms 200]
                                          [--images 16] [--with-training] [--data-dir DIR] [--shots DIR]

Trains a run for one smoke-tier epoch at the given size (fast backend) in a
throwaway data folder, starts a server on 127.0.0.1 and opens /whatif on it.
Each move drags the W_ei or W_ie slider's handle with the mouse to a random
position and releases it; the time is taken in the browser from the pointerup
event to the first animation frame painted after the frame of that slider
value has arrived (Bokeh paints its canvases in the animation frame after a
change). The page reports its server-side timings with each frame (simulation,
spectrum and the rest of the analysis, building the frame's arrays, applying
them to the document), and the page logs the arrival and size of every
websocket message, so the rest splits into the send, BokehJS's apply and the
browser's render. `--with-training` keeps one training run (same size, fast
backend) going on the server's worker meanwhile. Target: p95 <= 0.5 s.
`--shots DIR` saves the page at three slider positions instead of measuring.
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
# resolves at the first painted frame after the summary carries `attr`="value"; it
# listens to the summary model's change signal rather than polling every animation
# frame, which kept Chromium drawing frames (and burning CPU) for the whole wait
PAINTED_JS = """([attr, value, t0]) => new Promise(resolve => {
  const model = Bokeh.documents.flatMap(d => [...d.all_models])
      .find(m => typeof m.text === 'string' && m.text.includes('whatif-state'));
  const re = new RegExp(attr + '=(?:"|&quot;)([^"&]+)');
  const signal = model.properties.text.change;
  let timer = null;
  const check = () => {
    const found = (model.text.match(re) || [])[1];
    if (found === undefined || Math.abs(parseFloat(found) - value) >= 1e-6) return;
    const seen = performance.now();
    signal.disconnect(check);
    clearTimeout(timer);
    requestAnimationFrame(() => requestAnimationFrame(() =>
      resolve({seen: seen - t0, painted: performance.now() - t0, origin: performance.timeOrigin + t0,
               text: model.text})));
  };
  timer = setTimeout(() => { signal.disconnect(check); resolve(null); }, 60000);
  signal.connect(check);
  check(); })"""


# the arrival time and size of every websocket message, in the page's clock: the
# frame's patch arrives in a few messages (header, metadata, content, buffers)
WEBSOCKET_LOG_JS = """(() => {
  window.__wsLog = [];
  const Native = window.WebSocket;
  window.WebSocket = function (...args) {
    const ws = new Native(...args);
    ws.addEventListener('message', e => window.__wsLog.push(
        [performance.now(), typeof e.data === 'string' ? e.data.length : (e.data.byteLength || e.data.size || 0)]));
    return ws;
  };
  window.WebSocket.prototype = Native.prototype;
  Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
})();"""


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


def reused_run(data: DataDir, args) -> str | None:
    """A succeeded run of this size in a kept data folder (--data-dir), if any."""
    if not data.db_path.exists():
        return None
    store = RunStore(data.db_path)
    try:
        runs, _ = store.list_runs(state=RunState.SUCCEEDED)
    finally:
        store.close()
    for run in runs:
        if (run.config["n_e"], run.config["n_i"], run.config["t_ms"]) == (args.n_e, args.n_i, args.t_ms):
            print(f"reusing trained run {run.id} in {data.root}")
            return run.id
    return None


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc; gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def chromium_pids() -> list[int]:
    """This process's descendants that are Chromium (the browser Playwright launched)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                if "chrom" in Path(f"/proc/{child}/comm").read_text():
                    found.append(child)
            except OSError:
                pass
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def timings_of(text: str) -> dict[str, float]:
    import html
    import json
    import re

    inner = html.unescape(html.unescape(text))
    state = json.loads(re.search(r"<div class=\"whatif-state\"[^>]*>(.*?)</div>", inner, re.DOTALL).group(1))
    return {**state["timings_s"], **state.get("stamps", {})}  # a page before its stamps: none


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
    parser.add_argument("--data-dir", help="keep the trained run in this data folder and reuse it next time")
    parser.add_argument("--shots", metavar="DIR", help="instead of measuring, save screenshots of the page at "
                        "three slider positions (trained; W_ie x 0; W_ei x 0) into DIR")
    args = parser.parse_args(argv)
    random.seed(args.seed)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data = DataDir.at(Path(args.data_dir or Path(tmp) / "data"))
        run_id = reused_run(data, args) or trained_run(data, args.n_e, args.n_i, args.t_ms)
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
            if args.shots:
                shots(sync_playwright, url, run_id, Path(args.shots))
                return 0
            rows = measure(sync_playwright, url, run_id, args, process.pid)
            if args.with_training:
                httpx.post(f"{url}/api/runs/{training}/cancel")
        finally:
            process.terminate()
            process.wait(20)
    report(rows, args, load, os.getloadavg())
    return 0


def measure(sync_playwright, url: str, run_id: str, args, server_pid: int) -> list[dict]:
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # warm-up: the server's first what-if loads the kernels and the weights
        httpx.post(f"{url}/api/runs/{run_id}/whatif", json={"n_images": args.images}, timeout=600)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(120_000)
        page.add_init_script(WEBSOCKET_LOG_JS)
        page.goto(f"{url}/whatif?run={run_id}", timeout=300_000)
        page.wait_for_function(f"() => ({STATE_JS})() !== null", timeout=300_000, polling=200)
        page.locator(".slider-edit input").first.wait_for()
        if args.images != 16:
            box = page.locator(".bk-input-group:has(label:text-is('N images (accuracy, rates)')) input").first
            box.fill(str(args.images))
            box.press("Enter")
        page.wait_for_timeout(3000)
        page.evaluate("() => window.addEventListener('pointerup', e => { window.__released = e.timeStamp; }, true)")
        browser_pids = chromium_pids()
        for move in range(args.moves):
            cpu_before = cpu_seconds([server_pid]), cpu_seconds(browser_pids)
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
            logged = page.evaluate("() => window.__wsLog.length")
            seen = page.evaluate(PAINTED_JS, [f"data-{name}", value, released])
            if seen is None:
                print(f"move {move + 1:2d}: {name} -> {value}: no frame within 60 s", flush=True)
                continue
            cpu_server, cpu_browser = cpu_seconds([server_pid]) - cpu_before[0], cpu_seconds(browser_pids) - cpu_before[1]
            # the frame's messages: the last burst that arrived before the summary changed
            messages = [(t - released, size) for t, size in page.evaluate(f"() => window.__wsLog.slice({logged})")
                        if t - released <= seen["seen"]]
            burst = [m for m in messages if m[0] >= messages[-1][0] - 20] if messages else [(seen["seen"], 0)]
            rows.append({"slider": name, "value": value, "seen_s": seen["seen"] / 1000,
                         "message_s": burst[0][0] / 1000, "message_bytes": sum(size for _, size in burst),
                         "messages": len(messages),
                         "cpu_server": cpu_server, "cpu_browser": cpu_browser,
                         "total_s": seen["painted"] / 1000, "released": seen["origin"] / 1000,
                         **timings_of(seen["text"])})
            print(f"move {move + 1:2d}: {name} -> {value:5.2f}: {rows[-1]['total_s']:.3f} s "
                  f"(simulate {rows[-1]['simulate']:.3f}, analyse {rows[-1]['analyse']:.3f})", flush=True)
            page.wait_for_timeout(300)
        page.screenshot(path="/tmp/whatif_bench_last.png", full_page=True)
        browser.close()
    return rows


SHOTS = (("trained", {}), ("w_ie_x0", {"w_ie_scale": 0.0}), ("w_ei_x0", {"w_ei_scale": 0.0, "w_ie_scale": 1.0}))
SLIDER_ORDER = ("w_ei_scale", "w_ie_scale", "w_in_scale", "max_rate_hz", "tau_gaba_ms")


def shots(sync_playwright, url: str, run_id: str, folder: Path) -> None:
    """The page at each position of SHOTS (values typed into the sliders' boxes), as
    256-colour PNGs of the network and answer sections."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(f"{url}/whatif?run={run_id}", timeout=300_000)
        page.wait_for_function(f"() => ({STATE_JS})() !== null", timeout=300_000, polling=200)
        for name, knobs in SHOTS:
            for knob, value in knobs.items():
                box = page.locator(".slider-edit input").nth(SLIDER_ORDER.index(knob))
                box.fill(str(value))
                box.press("Enter")
                page.wait_for_function(f"() => (({STATE_JS})() || '').includes('data-{knob}=&quot;{value!r}&quot;')"
                                       f" || (({STATE_JS})() || '').includes('data-{knob}=\"{value!r}\"')",
                                       timeout=120_000, polling=200)
            page.wait_for_timeout(1500)  # the figures' repaint
            path = folder / f"whatif_{name}.png"
            page.screenshot(path=str(path), full_page=True)
            Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
            print(f"{path}: {knobs or 'trained'} ({path.stat().st_size // 1024} kB)")
        browser.close()


def report(rows: list[dict], args, load, load_end) -> None:
    total = [r["total_s"] for r in rows]
    print(f"\nWhat-if latency, {args.n_e} E / {args.n_i} I, {args.t_ms:g} ms trials, {args.images} images + the "
          f"picked one, {len(rows)} slider releases{' with one training run alongside' if args.with_training else ''}"
          f"; load average (1, 5, 15 min) at start {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}, "
          f"at the end {load_end[0]:.2f}, {load_end[1]:.2f}, {load_end[2]:.2f}")
    print(f"  release -> last figure painted: p50 {statistics.median(total):.3f} s, p95 {percentile(total, 95):.3f} s, "
          f"max {max(total):.3f} s (target p95 <= 0.5 s)")
    for key, label in (("simulate", "simulation (fast backend)"), ("analyse", "spectrum, rates, raster events"),
                       ("prepare", "frame arrays"), ("apply", "document update")):
        values = [r[key] for r in rows]
        print(f"  {label:<50} median {statistics.median(values):.3f} s, p95 {percentile(values, 95):.3f} s")
    # the wall-clock stamps of the server (same machine, same clock as the browser's)
    parts = (("browser -> server: websocket, Panel's change handling", lambda r: r["asked"] - r["released"]),
             ("-> inference thread started", lambda r: r["started"] - r["asked"]),
             ("what-if slot, outside simulate/analyse",
              lambda r: r["computed"] - r["started"] - r["simulate"] - r["analyse"] - r["prepare"]),
             ("-> document callback (next tick)", lambda r: r["applied"] - r["computed"]),
             ("-> frame's message arrives: serialise, send", lambda r: r["message_s"] - (r["applied"] + r["apply"] - r["released"])),
             ("-> frame applied in the browser (BokehJS)", lambda r: r["seen_s"] - r["message_s"]),
             ("Bokeh render (to the painted frame)", lambda r: r["total_s"] - r["seen_s"]))
    for label, part in parts if all("asked" in r for r in rows) else ():
        values = [part(r) for r in rows]
        print(f"  {label:<50} median {statistics.median(values):.3f} s, p95 {percentile(values, 95):.3f} s")
    if rows and "message_bytes" in rows[0]:
        values = [r["message_bytes"] / 1000 for r in rows]
        print(f"  {'frame message size (kB)':<50} median {statistics.median(values):.1f}, max {max(values):.1f}")
        values = [r["messages"] for r in rows]
        print(f"  {'websocket messages, release -> frame':<50} median {statistics.median(values):.0f}, "
              f"max {max(values)}")
    # CPU time is what a loaded machine cannot inflate (much): the work itself
    for key, label in (("cpu_server", "CPU per move: server process"), ("cpu_browser", "CPU per move: Chromium")):
        values = [r[key] for r in rows]
        print(f"  {label:<50} median {statistics.median(values):.3f} s, p95 {percentile(values, 95):.3f} s")


if __name__ == "__main__":
    sys.exit(main())
