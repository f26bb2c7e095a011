"""Screenshots of the MLflow UI: the experiment's runs, a run's curves and evaluation report, the run
comparison and the registered model page; and a check that the report's images load.

Not part of CI. Uses a running UI (``--ui-url``) or starts ``mlflow server`` on a free local port
over ``--backend-store-uri`` (default: the project's ``sqlite:///mlflow.db``), then opens each page
in headless Chromium (Debian: ``apt-get install -y chromium``). The UI is a single-page app, so
Chromium gets a virtual-time budget to fetch and render before the screenshot is taken.

    python scripts/screenshot_mlflow_ui.py --out screenshots/

The report check: Chromium loads the latest evaluated run's ``evaluation/report.html`` as the
server stores it (``--dump-dom``), and every image in it must be inside the page and decode as a
PNG; the exit status is 1 when one does not. Look at ``run_report.png`` for the page as the UI shows it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from pipeline.errors import CrackopsError  # noqa: E402
from registry.local_server import start_mlflow_server, stop_process_group  # noqa: E402

TRAINING_VIEW = "workflowType=machine_learning"
REPORT_ARTIFACT = "evaluation/report.html"  # log_evaluation's folder and the evaluate stage's HTML report
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def page_urls(client: MlflowClient, ui: str, experiment: str, model: str, max_runs: int) -> dict[str, str]:
    """name -> UI URL: the runs, the latest evaluated run's charts and report, the comparison of the
    latest finished runs (two or more) and the model pages."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CrackopsError(f"no experiment {experiment!r} in the tracking store")
    runs = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=max_runs)
    evaluated = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED' and metrics.test_f1 >= 0",
                                   order_by=["attributes.start_time DESC"], max_results=1)
    if not evaluated:
        raise CrackopsError(f"experiment {experiment!r} has no finished, evaluated run (run `dvc repro` first)")
    latest = evaluated[0].info.run_id
    urls = {
        # MLflow 3's UI shows its GenAI pages until a browser picks "Model training" (remembered per
        # browser) or the URL says so; the tag mlflow.experimentKind does not decide it.
        "experiment_runs": f"{ui}/#/experiments/{found.experiment_id}?{TRAINING_VIEW}",
        "run_charts": f"{ui}/#/experiments/{found.experiment_id}/runs/{latest}/model-metrics?{TRAINING_VIEW}",
        "run_report": f"{ui}/#/experiments/{found.experiment_id}/runs/{latest}/artifactPath/{REPORT_ARTIFACT}?{TRAINING_VIEW}",
    }
    if len(runs) >= 2:  # a comparison needs two
        ids = json.dumps([run.info.run_id for run in runs])
        query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([found.experiment_id])})
        urls["run_comparison"] = f"{ui}/#/compare-runs?{query}"
    urls["registered_model"] = f"{ui}/#/models/{urllib.parse.quote(model)}"
    try:
        champion = client.get_model_version_by_alias(model, "champion")
        urls["champion_version"] = f"{ui}/#/models/{urllib.parse.quote(model)}/versions/{champion.version}"
    except Exception:  # noqa: BLE001 - no champion yet: the model page is still worth a picture
        pass
    return urls


def check_report_images(chromium: str, client: MlflowClient, run_id: str, budget_ms: int) -> tuple[int, list[str]]:
    """Load the run's HTML report, as the server stores it, in Chromium; returns (images, problems):
    an image that is not inside the page (a link the UI's sandboxed frame cannot follow) or does
    not decode. (The server sends artifacts as downloads; the UI shows them from a blob in a frame
    that --dump-dom does not enter, so the stored page itself is what Chromium loads here.)"""
    import base64
    import re

    import cv2
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="crackops-report-") as folder, \
            tempfile.TemporaryDirectory(prefix="crackops-chromium-") as profile:
        page = Path(client.download_artifacts(run_id, REPORT_ARTIFACT, folder))
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               f"--virtual-time-budget={budget_ms}", "--dump-dom", page.as_uri()],
                              capture_output=True, text=True, timeout=120 + budget_ms / 1000)
    if done.returncode or "<body" not in done.stdout:
        raise CrackopsError(f"chromium could not load {REPORT_ARTIFACT} of run {run_id} (status {done.returncode}): "
                            f"{done.stderr[-800:]}")
    sources = re.findall(r'<img [^>]*src="([^"]*)"', done.stdout)
    problems = []
    for source in sources:
        match = re.match(r"data:image/png;base64,(.*)$", source)
        if match is None:
            problems.append(f"not inside the page: {source[:80]}")
            continue
        image = cv2.imdecode(np.frombuffer(base64.b64decode(match.group(1)), np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            problems.append("an embedded image does not decode")
    return len(sources), problems


def screenshot(chromium: str, url: str, out: Path, window: str, budget_ms: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Chromium picks the image format from the file extension, so the temporary file ends in .png too;
    # it lives beside `out` so the final rename is atomic.
    with tempfile.TemporaryDirectory(prefix="crackops-chromium-") as profile, \
            tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as staging:
        shot = Path(staging) / "shot.png"
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window}",
                   f"--virtual-time-budget={budget_ms}", f"--screenshot={shot}", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120 + budget_ms / 1000)
        if done.returncode or not shot.is_file() or shot.stat().st_size == 0:
            raise CrackopsError(f"chromium failed on {url} (status {done.returncode}): {done.stderr[-1500:]}")
        os.replace(shot, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui-url", default=None, help="a running MLflow UI/server (default: start one)")
    parser.add_argument("--backend-store-uri", default="sqlite:///mlflow.db", help="store to serve when starting one")
    parser.add_argument("--experiment", default="crackops")
    parser.add_argument("--model", default="crack-segmenter")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--max-runs", type=int, default=4, help="runs in the comparison (latest finished)")
    parser.add_argument("--window", default="1600,1000", help="browser window WIDTH,HEIGHT")
    parser.add_argument("--budget-ms", type=int, default=45000,
                        help="virtual time for the single-page app to render (a demo report is ~4 MB: "
                             "20 s left it blank on a loaded 2-core machine)")
    parser.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH)")
    args = parser.parse_args(argv)

    chromium = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        if not chromium:
            raise CrackopsError("chromium not found: install it (Debian: apt-get install -y chromium) "
                                "or pass --chromium")
        proc = None
        ui = args.ui_url
        if ui is None:
            args.out.mkdir(parents=True, exist_ok=True)
            ui, proc = start_mlflow_server(args.backend_store_uri, args.out / "mlflow-server.log")
        try:
            urls = page_urls(MlflowClient(ui), ui.rstrip("/"), args.experiment, args.model, args.max_runs)
            for name, url in urls.items():
                path = args.out / f"{name}.png"
                screenshot(chromium, url, path, args.window, args.budget_ms)
                print(f"{path}  <-  {url}")
            run_id = urls["run_report"].split("/runs/", 1)[1].split("/", 1)[0]
            images, problems = check_report_images(chromium, MlflowClient(ui), run_id, args.budget_ms)
            print(f"report of run {run_id}: {images} images, "
                  + ("all inside the page and decoding" if not problems else "; ".join(problems)))
            if problems or not images:
                return 1
        finally:
            if proc is not None:
                stop_process_group(proc)
    except CrackopsError as error:
        print(f"screenshot_mlflow_ui: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
