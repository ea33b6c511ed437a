#!/usr/bin/env python3
"""test_workbench.py — the workbench page in a real Chromium (headless, driven by Selenium).

Builds its own tiny base and a store filled by real `moetune train` runs, starts `moetune serve`
on a free port with an API key, then, in the browser: finds the run in the runs list; watches a
second run's loss curve grow while it trains (no reload); compares the two runs; loads the second
run's adapter from the adapters page and sees it served; asks base and adapter the same prompt
side by side, clicks "Right is better" and finds the pair in the store (sqlite3) with its
provenance (and "Tie" on a second ask: two equal ratings, no pair), swaps its chosen and rejected from the Pairs page, then drops it; shows a pair whose
text is an HTML/JS payload and checks that nothing ran and the text is shown literally; and checks that a cross-origin POST is refused (403 JSON) and that one
made by another site's page in the browser changed nothing. Writes a screenshot of each page
to --shots (docs/workbench/ by default).

usage: test_workbench.py [--moetune build/moetune] [--shots docs/workbench]
"""
import argparse
import http.server
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "wb-test-key"
XSS_PROMPT = "<script>window.__pwned = 'script'</script>"
XSS_CHOSEN = "<img src=x onerror=\"window.__pwned = 'img'\">"
XSS_REJECTED = "plain & <b>bold</b>"


def log(msg):
    print("[workbench] " + msg, flush=True)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit("FAIL: %s\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
    return r.stdout


def recipe(tmp, name, steps, lr, seed, adapter_dir):
    path = os.path.join(tmp, name + ".yaml")
    with open(path, "w") as f:
        f.write(f"""name: {name}
method: sft
model:
  path: {tmp}/base
adapter:
  type: lora
  r: 4
  alpha: 8
  dropout: 0
  targets: all-linear
data:
  train: {tmp}/train.jsonl
  eval: {tmp}/eval.jsonl
  format: text
  max_seq_len: 32
train:
  seed: {seed}
  steps: {steps}
  micro_batch: 2
  grad_accum: 1
  lr: {lr}
  warmup_steps: 0
  threads: 1
  log_every: 1
  eval_every: 20
  save_every: 0
thresholds:
  dap: 0
output:
  dir: {tmp}/run-{name}
  adapter: {adapter_dir}
  store: {tmp}/store.db
""")
    return path


def api(port, method, path, body=None, headers=None, key=KEY):
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    h.update(headers or {})
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method,
                                 data=json.dumps(body).encode() if body is not None else None, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(what, fn, timeout=60, every=0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(every)
    sys.exit("FAIL: timed out waiting for " + what)


def check(cond, msg):
    if not cond:
        sys.exit("FAIL: " + msg)
    log("ok: " + msg)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moetune", default=os.path.join(REPO, "build", "moetune"))
    ap.add_argument("--shots", default=os.path.join(REPO, "docs", "workbench"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = ap.parse_args()
    mt = os.path.abspath(a.moetune)
    os.makedirs(a.shots, exist_ok=True)
    t_start = time.time()
    tmp = tempfile.mkdtemp(prefix="moetune-workbench-")
    server = trainer = None
    driver = None
    evil = None
    try:
        # ---- fixtures: a tiny base, text data, a finished run with its adapter, XSS pairs
        run([mt, "init", "--preset", "tiny", "--seed", "3", "--tokenizer",
             os.path.join(REPO, "tests", "fixtures", "tokenizers", "deepseek_v3"), tmp + "/base"])
        words = "the court held that the contract was void because both parties were mistaken about the goods".split()
        with open(tmp + "/train.jsonl", "w") as f:
            for i in range(300):
                f.write(json.dumps({"text": " ".join(words[(i + k) % len(words)] for k in range(14))}) + "\n")
        with open(tmp + "/eval.jsonl", "w") as f:
            for i in range(8):
                f.write(json.dumps({"text": " ".join(words[(i * 3 + k) % len(words)] for k in range(14))}) + "\n")
        os.makedirs(tmp + "/adapters")
        run([mt, "train", recipe(tmp, "wb-first", 40, 5e-3, 1, tmp + "/adapters/wb-first")])
        with open(tmp + "/xss.jsonl", "w") as f:
            f.write(json.dumps({"prompt": XSS_PROMPT, "chosen": XSS_CHOSEN, "rejected": XSS_REJECTED,
                                "source": "<svg onload=\"window.__pwned='svg'\">"}) + "\n")
        run([mt, "pairs", "--store", tmp + "/store.db", "import", tmp + "/xss.jsonl", "--dataset", "payloads"])

        # ---- the server: model, adapters folder (not watched: loading is the page's job), store, key
        server = subprocess.Popen([mt, "serve", "--model", tmp + "/base", "--adapters", tmp + "/adapters",
                                   "--store", tmp + "/store.db", "--port", "0", "--api-key", KEY, "--threads", "1",
                                   "--max-seqs", "4"], stderr=subprocess.PIPE, text=True)
        port = None
        for line in server.stderr:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        check(port is not None, "moetune serve is listening")
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        base = "http://127.0.0.1:%d" % port

        # ---- safety over plain HTTP
        st, body = api(port, "GET", "/ui/api/runs", key=None)
        check(st == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", "the page's JSON needs the key (401 JSON)")
        st, body = api(port, "POST", "/v1/unload_lora_adapter", {"lora_name": "wb-first"},
                       headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
        check(st == 403 and json.loads(body)["error"]["code"] == "cross_origin",
              "a cross-origin POST with the right key is refused: 403 %s" % body[:80])

        # ---- the browser
        opts = webdriver.ChromeOptions()
        for o in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                  "--disable-gpu", "--no-proxy-server"):
            opts.add_argument(o)
        if os.path.exists("/usr/bin/chromium"):
            opts.binary_location = "/usr/bin/chromium"
        service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
        driver = webdriver.Chrome(options=opts, service=service)
        wait = WebDriverWait(driver, 30)
        shot = lambda name: driver.save_screenshot(os.path.join(a.shots, name + ".png"))

        driver.get(base + "/")
        notice = wait.until(EC.visibility_of_element_located((By.ID, "notice")))
        check("API key" in notice.text, "without the key the page says so: " + notice.text[:60])
        k = driver.find_element(By.ID, "api-key")
        k.send_keys(KEY)
        k.send_keys(Keys.TAB)

        # 1. the runs list has the run
        link = wait.until(EC.presence_of_element_located((By.XPATH, "//table[@id='runs']//a[text()='wb-first']")))
        check(True, "the runs list shows run wb-first")
        cells = [c.text for c in link.find_element(By.XPATH, "./ancestor::tr").find_elements(By.TAG_NAME, "td")]
        check(cells[3] == "sft" and cells[5] == "completed" and cells[6] == "40", "its row: method, status, steps %s" % cells[3:7])

        # 2. a second run trains; its page's curve grows while it does
        # its output to a file: a pipe nobody reads until the end fills up and stops the trainer
        train_log = open(tmp + "/wb-second.log", "w+")
        trainer = subprocess.Popen([mt, "train", recipe(tmp, "wb-second", 600, 2e-2, 2, tmp + "/adapters/wb-second")],
                                   stdout=train_log, stderr=subprocess.STDOUT)
        trainer_out = lambda: open(tmp + "/wb-second.log").read()[-2000:]

        def second_running():
            if trainer.poll() is not None:
                sys.exit("FAIL: the second training ended before it was seen running (rc %d): %s"
                         % (trainer.returncode, trainer_out()))
            st, body = api(port, "GET", "/ui/api/runs")
            runs = [r for r in json.loads(body)["runs"] if r["name"] == "wb-second"]
            return runs[0]["id"] if runs and runs[0]["status"] == "running" and runs[0]["last_step"] >= 1 else None
        wait_for("the second run to start", second_running, timeout=120)
        driver.get(base + "/#/runs")
        wait.until(EC.presence_of_element_located((By.XPATH, "//table[@id='runs']//a[text()='wb-second']"))).click()
        wait.until(EC.presence_of_element_located((By.ID, "live")))
        driver.execute_script("window.__same_page = 42")
        # read in one script: the chart is redrawn on every event, a found element can go stale
        loss = lambda: int(driver.execute_script(
            "const c = document.querySelector(\".chart[data-metric='loss']\"); return c ? c.dataset.points : 0") or 0)
        n0 = wait_for("the loss chart", lambda: loss() or None, timeout=20)
        n1 = wait_for("the loss curve to grow", lambda: loss() > n0 + 5 and loss(), timeout=30)
        check(driver.execute_script("return window.__same_page") == 42,
              "the loss curve grew from %d to %d points while the run trained, without a reload" % (n0, n1))
        shot("run")
        if trainer.wait(timeout=400) != 0:
            sys.exit("FAIL: the second training failed: " + trainer_out())
        wait.until(EC.text_to_be_present_in_element((By.ID, "run-status"), "completed"))
        n2 = loss()
        check(n2 >= 600, "the stream delivered every step (%d points) and the status turned completed" % n2)

        # 3. compare the two runs
        driver.get(base + "/#/runs")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#runs input[type=checkbox]")))
        for b in driver.find_elements(By.CSS_SELECTOR, "#runs input[type=checkbox]"):
            b.click()
        driver.find_element(By.ID, "compare").click()
        chart = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#compare-charts .chart[data-metric='loss']")))
        paths = chart.find_elements(By.CSS_SELECTOR, "path[data-series]")
        check(len(paths) == 2, "the compare page draws both runs' loss on one chart")
        diff = driver.find_element(By.ID, "diff").text
        check("steps" in diff and "lr" in diff and "seed" in diff, "and lists the recipe differences (steps, lr, seed)")
        shot("compare")
        driver.get(base + "/#/runs")
        wait.until(EC.presence_of_element_located((By.XPATH, "//table[@id='runs']//a[text()='wb-second']")))
        shot("runs")

        # 4. load the second run's adapter from the page
        driver.get(base + "/#/adapters")
        btn = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "tr[data-folder='wb-second'] button.load")))
        check(not driver.find_elements(By.CSS_SELECTOR, "#served tr[data-adapter='wb-second']"), "wb-second is not served yet")
        btn.click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#served tr[data-adapter='wb-second']")))
        st, body = api(port, "GET", "/v1/models")
        check(any(m["id"] == "wb-second" and m["moetune"]["loaded"] for m in json.loads(body)["data"]),
              "loaded from the page, /v1/models serves wb-second")

        # 5. side by side, base vs the new adapter, right is better
        driver.get(base + "/#/playground")
        wait.until(EC.presence_of_element_located((By.ID, "sbs-prompt")))
        from selenium.webdriver.support.ui import Select
        Select(driver.find_element(By.ID, "left-model")).select_by_visible_text("base")
        Select(driver.find_element(By.ID, "right-model")).select_by_visible_text("wb-second")
        driver.find_element(By.ID, "sbs-prompt").send_keys("the court held that")
        driver.find_element(By.ID, "sbs-ask").click()
        wait.until(EC.element_to_be_clickable((By.ID, "right-better")))
        left, right = driver.find_element(By.ID, "left-out").text, driver.find_element(By.ID, "right-out").text
        check(left and right and left != right, "both answered, differently (%r / %r)" % (left[:30], right[:30]))
        driver.find_element(By.ID, "right-better").click()
        wait.until(EC.presence_of_element_located((By.ID, "verdict-done")))
        db = sqlite3.connect(tmp + "/store.db")
        rows = db.execute("SELECT p.source, p.annotator, p.label_json, p.chosen, p.rejected FROM pairs p JOIN datasets d"
                          " ON d.id = p.dataset_id WHERE d.name = 'workbench'").fetchall()
        db.close()
        check(len(rows) == 1, "one pair in dataset 'workbench'")
        src, annot, label, chosen, rejected = rows[0]
        lab = json.loads(label)
        check(annot == "labelled in the workbench" and src == "served", "its provenance: source served, annotator '%s'" % annot)
        check(right in chosen and left in rejected and "wb-second" in json.dumps(lab),
              "the right (adapter's) answer is chosen, the base's rejected, the adapter named in its label")
        shot("playground")
        # a tie: the same prompt again, both answers rated 0 in the dataset, no pair made
        driver.find_element(By.ID, "sbs-ask").click()
        wait.until(EC.element_to_be_clickable((By.ID, "tie"))).click()
        done = wait.until(EC.presence_of_element_located((By.ID, "verdict-done")))
        db = sqlite3.connect(tmp + "/store.db")
        ratings = db.execute("SELECT r.rating, r.annotator FROM served_ratings r JOIN datasets d ON d.id = r.dataset_id"
                             " WHERE d.name = 'workbench'").fetchall()
        n_pairs = db.execute("SELECT count(*) FROM pairs p JOIN datasets d ON d.id = p.dataset_id"
                             " WHERE d.name = 'workbench'").fetchone()[0]
        db.close()
        check(ratings == [(0.0, "labelled in the workbench")] * 2 and n_pairs == 1 and "0 pair(s)" in done.text,
              "Tie: both answers rated 0, no new pair")
        driver.get(base + "/#/adapters")
        req = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#served tr[data-adapter='wb-second'] td.requests")))
        check(req.text == "2", "the adapters page counts the 2 requests wb-second served")
        shot("adapters")

        # 6. a pair whose text is an HTML/JS payload is shown as text, and runs nothing
        driver.get(base + "/#/pairs")
        wait.until(EC.presence_of_element_located((By.XPATH, "//table[@id='datasets']//a[text()='payloads']"))).click()
        cell = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#pairs td.prompt")))
        check(cell.text == XSS_PROMPT, "the <script> prompt is shown literally")
        check(driver.find_element(By.CSS_SELECTOR, "#pairs td.chosen").text == XSS_CHOSEN, "the <img onerror> answer too")
        check(not driver.find_elements(By.CSS_SELECTOR, "#pairs img, #pairs script, #pairs svg, #pairs b"),
              "no element was made from the payloads")
        time.sleep(0.3)
        check(driver.execute_script("return window.__pwned === undefined"), "and none of them ran")
        try:
            driver.switch_to.alert
            sys.exit("FAIL: an alert is open")
        except NoAlertPresentException:
            pass
        shot("pairs")
        driver.get(base + "/#/pairs/workbench")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#pairs td.chosen")))
        check("labelled in the workbench" in driver.find_element(By.ID, "pairs").text, "the workbench pair is listed with its annotator")

        def workbench_pairs():
            db = sqlite3.connect(tmp + "/store.db")
            rows = db.execute("SELECT p.chosen, p.rejected, p.label_json FROM pairs p JOIN datasets d ON d.id = p.dataset_id"
                              " WHERE d.name = 'workbench'").fetchall()
            db.close()
            return rows
        driver.find_element(By.CSS_SELECTOR, "#pairs button.swap").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "notice"), "swapped"))
        rows = workbench_pairs()
        check(rows[0][0] == rejected and rows[0][1] == chosen and json.loads(rows[0][2])["chosen_model"] == "base",
              "Swap: chosen and rejected changed places in the store, the label's models with them")
        shot("pairs-edit")
        driver.find_element(By.CSS_SELECTOR, "#pairs button.drop").click()
        check(workbench_pairs() != [], "one click on Drop only asks")
        driver.find_element(By.CSS_SELECTOR, "#pairs button.drop").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "notice"), "dropped"))
        check(workbench_pairs() == [], "the second drops the pair from the store")

        # 7. another site's page in the same browser tries to unload the adapter: refused
        evil_dir = tempfile.mkdtemp(dir=tmp)
        with open(evil_dir + "/evil.html", "w") as f:
            f.write("<!doctype html><script>fetch('%s/v1/unload_lora_adapter', {method: 'POST', mode: 'no-cors',"
                    " headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({lora_name: 'wb-second'})})"
                    ".then(() => document.title = 'sent', () => document.title = 'sent')</script>" % base)
        handler = lambda *x, **kw: http.server.SimpleHTTPRequestHandler(*x, directory=evil_dir, **kw)
        http.server.SimpleHTTPRequestHandler.log_message = lambda *x: None
        evil = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        driver.get("http://localhost:%d/evil.html" % evil.server_address[1])
        wait.until(EC.title_is("sent"))
        st, body = api(port, "GET", "/v1/models")
        check(any(m["id"] == "wb-second" and m["moetune"]["loaded"] for m in json.loads(body)["data"]),
              "a POST from another origin's page changed nothing (wb-second still loaded)")

        # the page without a model: moetune ui says the playground has none
        ui_port = free_port()
        ui = subprocess.Popen([mt, "ui", "--store", tmp + "/store.db", "--port", str(ui_port)],
                              stderr=subprocess.DEVNULL)
        try:
            def ui_up():
                if ui.poll() is not None:
                    sys.exit("FAIL: moetune ui exited")
                try:
                    return api(ui_port, "GET", "/health", key=None)[0] == 200
                except urllib.error.URLError:
                    return False
            wait_for("moetune ui", ui_up, timeout=10)
            driver.get("http://127.0.0.1:%d/#/playground" % ui_port)
            wait.until(EC.presence_of_element_located((By.ID, "no-model")))
            check(True, "moetune ui: the playground says no model is loaded")
        finally:
            ui.terminate()
            ui.wait(timeout=10)
        log("passed in %.1f s; screenshots in %s" % (time.time() - t_start, a.shots))
    finally:
        if driver:
            driver.quit()
        if evil:
            evil.shutdown()
        for p in (trainer, server):
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if a.keep:
            log("scratch kept in " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
