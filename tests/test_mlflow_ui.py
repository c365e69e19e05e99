"""MLflow as the user's comparison tool: two nested lambda runs logged by the sweep's own
code (`suti.tracking.lambda_run`) into a real `mlflow server`, opened in MLflow's compare
view in headless Chromium: lambda is in the params table, with each run's own value."""
from __future__ import annotations

import json
import urllib.parse

from conftest import smoke_overrides
from servers import mlflow_server
from test_rate_page import _chrome

ROWS = [{"sample_key": f"experts/c{i}/s.png", "cluster_id": f"c{i % 2}", "prompt": f"a mug {i}",
         "delta": 0.01 * i, "demo_keys": ["a.png"], "demo_texts": ["a mug"]} for i in range(5)]


def test_compare_view_lists_lambda_as_a_param(tmp_path):
    import mlflow
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from suti.config import compose
    from suti.tasks.filter import select
    from suti.tracking import lambda_run, mlflow_run

    with mlflow_server(tmp_path) as url:
        cfg = compose(smoke_overrides(tmp_path / "work", f"tracking.uri={url}"))
        runs = {}
        with mlflow_run(cfg, "sweep") as parent:
            for lam in (None, 0.02):
                G = select(ROWS, lam)
                with lambda_run(cfg, parent, lam, G, digest=f"d{len(G)}") as rid:
                    runs[lam] = rid
        client = mlflow.MlflowClient(tracking_uri=url)
        for lam, rid in runs.items():  # the API agrees with the page
            run = client.get_run(rid)
            assert run.data.params["lambda"] == run.data.params["filter.lambda_"] == ("None" if lam is None else "0.02")
            assert run.data.tags["mlflow.parentRunId"] == parent
            assert [d.dataset.name for d in run.inputs.dataset_inputs] == [f"G(lambda={run.data.params['lambda']})"]
        exp = client.get_run(parent).info.experiment_id
        q = urllib.parse.urlencode({"runs": json.dumps(list(runs.values())), "experiments": json.dumps([exp])})
        driver = _chrome(tmp_path)
        try:
            driver.get(f"{url}/#/compare-runs?{q}")
            wait = WebDriverWait(driver, 60)
            # the params table: a row whose header is `lambda`, holding both runs' values
            row = wait.until(lambda d: next((r for r in d.find_elements(By.TAG_NAME, "tr")
                                             if r.text.split() and r.text.split()[0] == "lambda"), None))
            assert row.text.split()[1:] == ["None", "0.02"], row.text
            body = driver.find_element(By.TAG_NAME, "body").text
            assert "No parameters to display" not in body
            assert "G.size" in body  # the metrics table too
            shot = tmp_path / "compare-lambda.png"
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            driver.quit()
